//! A readable, aligned table of flow records (for terminals; JSON lines are for machines).

use std::fmt::Write;

use super::{Endpoint, FlowRecord};

const HEADERS: [&str; 12] = [
    "PROTO",
    "SRC",
    "DST",
    "STATE",
    "PKTS →",
    "PKTS ←",
    "BYTES →",
    "BYTES ←",
    "VERDICT",
    "DROPS",
    "POLICY",
    "LAST SEEN",
];

/// Columns holding numbers (right-aligned).
const NUMERIC: std::ops::RangeInclusive<usize> = 4..=7;

/// Renders `flows` as a table with a header row, one row per flow in the order of their first
/// (else last) sighting, columns aligned. Endpoints show their attribution (`ns/pod`,
/// `node:…` or the subnet) before the address when there is one. `verdicts[i]`, when given,
/// is flow `i`'s verdict under the policies in force (`allowed`, `denied`, `not-isolated`; `-`
/// when unknown); DROPS is the dropped packets with the kernel's reason, POLICY the policy that
/// explains the drop, or the policies a node did not enforce (`unenforced: …`).
pub fn render(flows: &[FlowRecord], verdicts: &[Option<String>]) -> String {
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by_key(|&i| (flows[i].seen_at(), i));
    let rows: Vec<[String; 12]> = order
        .iter()
        .map(|&i| row(&flows[i], verdicts.get(i).cloned().flatten()))
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    line(&mut out, &HEADERS.map(str::to_owned), &widths);
    for r in &rows {
        line(&mut out, r, &widths);
    }
    out
}

fn line(out: &mut String, cells: &[String; 12], widths: &[usize; 12]) {
    let mut text = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths.iter()).enumerate() {
        let pad = w.saturating_sub(cell.chars().count());
        if NUMERIC.contains(&i) {
            let _ = write!(text, "{}{}", " ".repeat(pad), cell);
        } else {
            let _ = write!(text, "{}{}", cell, " ".repeat(pad));
        }
        if i + 1 < cells.len() {
            text.push_str("  ");
        }
    }
    out.push_str(text.trim_end());
    out.push('\n');
}

fn endpoint(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (std::net::IpAddr::V6(ip), Some(p)) => format!("[{ip}]:{p}"),
        (ip, Some(p)) => format!("{ip}:{p}"),
        (ip, None) => ip.to_string(),
    };
    let who = match (&e.namespace, &e.pod, &e.node, &e.subnet) {
        (Some(ns), Some(pod), _, _) => Some(format!("{ns}/{pod}")),
        (_, _, Some(node), _) => Some(format!("node:{node}")),
        (_, _, _, Some(subnet)) => Some(subnet.clone()),
        _ => None,
    };
    match who {
        Some(w) => format!("{w} {addr}"),
        None => addr,
    }
}

fn row(f: &FlowRecord, verdict: Option<String>) -> [String; 12] {
    let p = f.packets.unwrap_or_default();
    let b = f.bytes.unwrap_or_default();
    let dash = || "-".to_owned();
    let (drops, policy) = match &f.drops {
        Some(d) if d.count > 0 => (
            match &d.reason {
                Some(r) => format!("{} {r}", d.count),
                None => d.count.to_string(),
            },
            d.policy.clone().unwrap_or_else(dash),
        ),
        _ => (dash(), dash()),
    };
    let policy = match &f.unenforced {
        Some(u) => format!("unenforced: {}", u.policy),
        None => policy,
    };
    // A flow nothing answered shows no counters rather than zeros.
    let counter = |n: u64, present: bool| if present { n.to_string() } else { dash() };
    [
        f.protocol.to_string(),
        endpoint(&f.src),
        endpoint(&f.dst),
        f.state.map(|s| s.to_string()).unwrap_or_else(dash),
        counter(p.sent, f.packets.is_some()),
        counter(p.received, f.packets.is_some()),
        counter(b.sent, f.bytes.is_some()),
        counter(b.received, f.bytes.is_some()),
        verdict.unwrap_or_else(dash),
        drops,
        policy,
        f.last_seen
            .map(|t| t.strftime("%H:%M:%S").to_string())
            .unwrap_or_else(dash),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::flow::{Directional, FlowState, Protocol};

    #[test]
    fn renders_aligned_rows() {
        let mut a = FlowRecord::new(
            Protocol::Tcp,
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            Some(80),
        );
        a.src.port = Some(40000);
        a.state = Some(FlowState::Established);
        a.packets = Some(Directional {
            sent: 12,
            received: 10,
        });
        a.dst.namespace = Some("shop".into());
        a.dst.pod = Some("api-1".into());
        let mut b = FlowRecord::new(
            Protocol::Icmpv6,
            "fd00::1".parse::<IpAddr>().unwrap(),
            "fd00::2".parse::<IpAddr>().unwrap(),
            None,
        );
        b.state = Some(FlowState::Active);
        b.drops = Some(crate::flow::Drops {
            count: 3,
            reason: Some("NETFILTER_DROP".into()),
            policy: Some("shop/deny".into()),
        });
        let text = render(&[a, b], &[Some("allowed".into()), Some("denied".into())]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("PROTO   SRC"));
        assert!(lines[1].contains("10.0.0.1:40000"));
        assert!(lines[1].contains("shop/api-1 10.0.0.2:80"));
        assert!(lines[2].contains("fd00::1"));
        // The STATE column starts at the same offset on every line.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 11], "established");
        assert_eq!(&lines[2][col..col + 6], "active");
        // Columns line up in characters (the headers' arrows are wider in bytes).
        let chars = |l: &str| l.chars().collect::<Vec<char>>();
        let at = lines[0][..lines[0].find("VERDICT").unwrap()]
            .chars()
            .count();
        let cell = |l: &str, n: usize| chars(l)[at..at + n].iter().collect::<String>();
        assert_eq!(cell(lines[1], 7), "allowed");
        assert_eq!(cell(lines[2], 6), "denied");
        assert!(
            lines[2].contains("3 NETFILTER_DROP  shop/deny"),
            "{}",
            lines[2]
        );
        // No counters: dashes, not zeros.
        let before: String = chars(lines[2])[..at].iter().collect();
        assert!(before.trim_end().ends_with('-'), "{}", lines[2]);
    }

    #[test]
    fn rows_are_in_time_order() {
        let at = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        let flow = |ip: &str, t: &str| {
            let mut f = FlowRecord::new(
                Protocol::Tcp,
                ip.parse::<IpAddr>().unwrap(),
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                Some(80),
            );
            f.first_seen = at(t);
            f
        };
        let text = render(
            &[
                flow("10.0.0.2", "2026-01-01T00:00:02Z"),
                flow("10.0.0.1", "2026-01-01T00:00:01Z"),
            ],
            &[],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("10.0.0.1") && lines[2].contains("10.0.0.2"),
            "{text}"
        );
    }
}
