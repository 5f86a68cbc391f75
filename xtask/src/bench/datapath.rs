//! `cargo xtask bench datapath`: the cost of the eBPF datapath on pod traffic.
//!
//! Two namespaces ("pods") on a bridge, like a bridge CNI. Per round: an iperf3 TCP stream
//! (throughput) and a TCP request/response loop of 1-byte messages (transactions per second)
//! in each of three arms — nothing attached, the no-op program attached to both pods' host
//! interfaces (tcx ingress + egress, the fixed cost of the hooks), `netpol-observe agent`
//! attached — in an order rotating from round to round. Reports every run, the medians and
//! their ratios, then runs the hooked arms once more with `kernel.bpf_stats_enabled=1` for the
//! kernel's ns per program run.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::stats::Arms;

const BRIDGE: &str = "nbbr0";
const PODS: [(&str, &str, &str); 2] = [
    ("nb-a", "nbva0", "10.99.0.2"),
    ("nb-b", "nbvb0", "10.99.0.3"),
];
const SERVER_IP: &str = "10.99.0.3";

/// Removes the bench topology on drop (also on error or panic).
struct Topology;

impl Topology {
    fn create() -> Result<Topology> {
        let t = Topology;
        t.cleanup();
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", "10.99.0.1/24", "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for (ns, host_if, addr) in PODS {
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", host_if, "master", BRIDGE, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(t)
    }

    fn cleanup(&self) {
        for (ns, host_if, _) in PODS {
            let _ = quiet(&["netns", "del", ns]);
            let _ = quiet(&["link", "del", host_if]);
        }
        let _ = quiet(&["link", "del", BRIDGE]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    crate::run(Command::new("ip").args(args))
}

fn quiet(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("ip {args:?} failed");
    }
    Ok(())
}

/// What is attached to the pods' host interfaces during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// Nothing.
    Bare,
    /// `tc_noop` on tcx ingress + egress, attached like the agent attaches its programs.
    Noop,
    /// `netpol-observe agent`.
    Agent,
}

const ARMS: [Arm; 3] = [Arm::Bare, Arm::Noop, Arm::Agent];

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Bare => "no hooks",
            Arm::Noop => "no-op hooks",
            Arm::Agent => "agent",
        }
    }

    /// Starts what this arm attaches (nothing for [`Arm::Bare`]).
    fn start(self, bin: &Path) -> Result<Option<Attached>> {
        let args: &[&str] = match self {
            Arm::Bare => return Ok(None),
            Arm::Noop => &["bench-hooks", "noop", "--interfaces", "nbv*"],
            Arm::Agent => &["agent", "--interfaces", "nbv*", "--output", "jsonl"],
        };
        Attached::start(bin, args).map(Some)
    }
}

/// A process with programs attached (the agent or the no-op hooks), started and waited for
/// until it logs "datapath attached"; stopped with SIGINT on drop.
struct Attached {
    child: Child,
}

impl Attached {
    fn start(bin: &Path, args: &[&str]) -> Result<Attached> {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("stderr of the attached process")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{args:?} did not attach within 10 s");
            }
            match lines.next() {
                Some(Ok(l)) if l.contains("datapath attached") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.wait();
                    bail!("{args:?} exited before attaching");
                }
            }
        }
        // Keep draining stderr so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Attached { child })
    }

    fn stop(mut self) -> Result<()> {
        self.signal_and_wait()
    }

    fn signal_and_wait(&mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self
            .child
            .wait()
            .context("waiting for the attached process")?;
        if !status.success() {
            bail!("the attached process exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal_and_wait();
        }
    }
}

fn enter(ns: &str) -> Result<()> {
    let f = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    // SAFETY: setns on a namespace descriptor; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// iperf3 TCP stream from pod a to pod b; Gbit/s received.
fn throughput(seconds: u64) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", "nb-b", "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", "nb-a", "iperf3", "-c", SERVER_IP, "-p", "5201", "-J", "-t",
        ])
        .arg(seconds.to_string())
        .output()
        .context("running iperf3 -c")?;
    let _ = server.wait();
    if !out.status.success() {
        bail!("iperf3 -c failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 output lacks end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// 1-byte TCP request/response between the pods; transactions per second.
fn request_response(seconds: u64) -> Result<f64> {
    let listener = std::thread::spawn(|| -> Result<TcpListener> {
        enter("nb-b")?;
        Ok(TcpListener::bind("0.0.0.0:5300")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> Result<f64> {
        enter("nb-a")?;
        let addr: SocketAddr = format!("{SERVER_IP}:5300").parse()?;
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        c.set_nodelay(true)?;
        let mut b = [0u8; 1];
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let mut n: u64 = 0;
        while Instant::now() < end {
            c.write_all(&[1])?;
            c.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    });
    let tps = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(tps)
}

fn measure(arm: Arm, bin: &Path, seconds: u64) -> Result<(f64, f64)> {
    let attached = arm.start(bin)?;
    let t = throughput(seconds)?;
    let rr = request_response(seconds)?;
    if let Some(a) = attached {
        a.stop()?;
    }
    Ok((t, rr))
}

/// Sets `kernel.bpf_stats_enabled` to 1 and restores the previous value on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        std::fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("writing {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS_SYSCTL, self.previous.trim());
    }
}

/// One program's cumulative run count and run time, by kernel program id.
#[derive(Debug, Clone, Default)]
struct ProgStats {
    name: String,
    runs: u64,
    ns: u64,
    xlated: u64,
    jited: u64,
}

/// The programs attached to the pods' host interfaces, by id (a program attached to both
/// interfaces appears once).
fn prog_stats(bin: &Path) -> Result<std::collections::BTreeMap<u64, ProgStats>> {
    let mut args = vec!["bench-hooks", "stats"];
    args.extend(PODS.iter().map(|p| p.1));
    let out = Command::new(bin)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running bench-hooks stats")?;
    if !out.status.success() {
        bail!("bench-hooks stats failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bench-hooks stats")?;
    let mut m = std::collections::BTreeMap::new();
    for p in v.as_array().context("bench-hooks stats: not an array")? {
        let num = |k: &str| p[k].as_u64().unwrap_or(0);
        m.insert(
            num("id"),
            ProgStats {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                runs: num("run_count"),
                ns: num("run_time_ns"),
                xlated: num("xlated_bytes"),
                jited: num("jited_bytes"),
            },
        );
    }
    Ok(m)
}

/// Per-program ns per run between two snapshots, and the total program time.
fn per_run(
    before: &std::collections::BTreeMap<u64, ProgStats>,
    after: &std::collections::BTreeMap<u64, ProgStats>,
) -> (String, u64) {
    let mut parts = Vec::new();
    let mut total = 0;
    for (id, a) in after {
        let b = before.get(id).cloned().unwrap_or_default();
        let runs = a.runs.saturating_sub(b.runs);
        let ns = a.ns.saturating_sub(b.ns);
        total += ns;
        let per = if runs == 0 {
            0.0
        } else {
            ns as f64 / runs as f64
        };
        parts.push(format!("{} {per:.1} ns/run ({runs} runs)", a.name));
    }
    (parts.join(", "), total)
}

/// Runs each hooked arm once more with `kernel.bpf_stats_enabled=1` and prints the kernel's
/// ns per program run — a figure that machine noise hardly moves, unlike throughput.
fn program_costs(bin: &Path, seconds: u64) -> Result<()> {
    println!(
        "ns per program run (kernel.bpf_stats_enabled=1; separate {seconds} s runs after the rounds):"
    );
    for arm in [Arm::Noop, Arm::Agent] {
        let attached = arm.start(bin)?;
        let stats = BpfStats::enable()?;
        let s0 = prog_stats(bin)?;
        let started = Instant::now();
        let tps = request_response(seconds)?;
        let transactions = tps * started.elapsed().as_secs_f64();
        let s1 = prog_stats(bin)?;
        let gbps = throughput(seconds)?;
        let s2 = prog_stats(bin)?;
        drop(stats);
        if let Some(a) = attached {
            a.stop()?;
        }
        let (rr_runs, rr_total) = per_run(&s0, &s1);
        let (tput_runs, _) = per_run(&s1, &s2);
        let per_tx = if transactions > 0.0 {
            rr_total as f64 / transactions
        } else {
            0.0
        };
        let sizes = s2
            .values()
            .map(|p| format!("{} {} B xlated / {} B jited", p.name, p.xlated, p.jited))
            .collect::<Vec<_>>()
            .join(", ");
        println!("  {}: {sizes}", arm.label());
        println!(
            "    request/response ({tps:.0}/s): {rr_runs}; {per_tx:.0} ns of programs per \
             transaction ({:.0} ns per transaction)",
            1e9 / tps.max(1.0)
        );
        println!("    throughput ({gbps:.2} Gbit/s): {tput_runs}");
    }
    Ok(())
}

/// Runs the datapath benchmark: `rounds` rounds of the three arms in rotating order, then
/// the per-program costs.
pub fn run(root: &Path, rounds: usize, seconds: u64) -> Result<()> {
    if !crate::is_root() {
        bail!("the datapath benchmark creates namespaces and loads eBPF programs: run it as root");
    }
    let bin = super::release_binary(root)?;
    let _topology = Topology::create()?;
    let labels = ARMS.map(Arm::label);
    let mut tput = Arms::new(
        format!("iperf3 TCP throughput, Gbit/s ({seconds} s runs)"),
        &labels,
    );
    let mut rr = Arms::new(
        format!("TCP request/response, transactions/s ({seconds} s runs)"),
        &labels,
    );
    for round in 0..rounds {
        // Rotate the order (B N A, N A B, A B N, ...) so drift hits every arm alike.
        for k in 0..ARMS.len() {
            let i = (round + k) % ARMS.len();
            let (t, r) = measure(ARMS[i], &bin, seconds)?;
            eprintln!(
                "round {}/{rounds} {:<12} throughput {t:.2} Gbit/s, rr {r:.0}/s",
                round + 1,
                ARMS[i].label()
            );
            tput.runs[i].push(t);
            rr.runs[i].push(r);
        }
    }
    // Indices into ARMS.
    let (bare, noop, agent) = (0, 1, 2);
    let comparisons = [(noop, bare), (agent, bare), (agent, noop)];
    println!("{}", tput.report(&comparisons));
    println!("{}", rr.report(&comparisons));
    println!(
        "targets (agent / no hooks): throughput ratio >= 0.98 ({}), request/response ratio >= \
         0.97 ({})",
        if tput.ratio(agent, bare) >= 0.98 {
            "met"
        } else {
            "NOT met"
        },
        if rr.ratio(agent, bare) >= 0.97 {
            "met"
        } else {
            "NOT met"
        }
    );
    program_costs(&bin, seconds)
}
