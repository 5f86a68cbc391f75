//! Benchmark harnesses: the policy engine ([`engine`]), the recommender ([`recommend`]), the
//! agent's userspace pipeline ([`agent`]) and a large cluster's inventory ([`inventory`]).

pub mod agent;
pub mod engine;
pub mod inventory;
pub mod recommend;

/// CPU time of the whole process, every thread included (user + system), in seconds, from
/// `/proc/self/stat` (10 ms ticks; 0 where unavailable).
pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command name, which is in parentheses and may hold spaces:
            // `utime` and `stime` are fields 14 and 15, 11 after the state (field 3).
            let rest = s.get(s.rfind(')')? + 2..)?;
            let mut fields = rest.split_whitespace().skip(11);
            let utime: u64 = fields.next()?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// The median of `v` (the mean of the two middle values for an even count; 0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
