//! `cargo xtask bench datapath`: the cost of the eBPF datapath on pod traffic.
//!
//! Two namespaces ("pods") on a bridge, like a bridge CNI. Per round: an iperf3 TCP stream
//! (throughput) and a TCP request/response loop of 1-byte messages (transactions per second)
//! in each of three arms — nothing attached, the no-op program attached to both pods' host
//! interfaces (tcx ingress + egress, the fixed cost of the hooks), `netpol-observe agent`
//! attached — in an order rotating from round to round — and in each of two placements of the
//! pods' processes (`same-cpu`: both on CPU 1; `cross-cpu`: client on CPU 0, server on CPU 1).
//! Every run starts after a settle pause and leaves its warm-up out. With
//! `kernel.bpf_stats_enabled=1` for the whole run, every hooked request/response run also
//! reads the kernel's ns of the programs over its measured window. Reports first the
//! datapath bar — kernel ns of programs per transaction, agent / no-op hooks, median and
//! min–max of the per-round ratios per placement — then every run's rate, the medians and
//! their ratios per placement (with the spread of the per-round ratios), and the ns per run of
//! each program.
//!
//! Options after `--`: `--bin PATH` measures a prebuilt binary (`--hooks PATH`: a prebuilt
//! `netpol-observe-bench` for the no-op hooks and the statistics); `--baseline PATH` adds a
//! fourth arm to every round, another binary's agent (the before/after of a datapath change
//! within one run: `agent / baseline agent`, in rates and in ns per transaction);
//! `--placement same-cpu|cross-cpu` keeps one placement; `--rr-only` leaves the throughput
//! runs out; `--flows N` runs
//! the request/response loop over N connections, one transaction on each in turn (many
//! concurrent flows on one CPU, more than its front entries of the flow map); `--ipv6` runs
//! every stream and loop over the pods' IPv6 addresses. `--dns-cost` measures only the DNS-answer
//! capture instead (`bench/dns_cost.rs`; with `--baseline-object PATH`, another build's eBPF
//! object too).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::stats::{Arms, median, quantile};

const BRIDGE: &str = "nbbr0";
/// (namespace, host interface, IPv4 address, IPv6 address) of each pod.
const PODS: [(&str, &str, &str, &str); 2] = [
    ("nb-a", "nbva0", "10.99.0.2", "fd99::2"),
    ("nb-b", "nbvb0", "10.99.0.3", "fd99::3"),
];
/// Pod b's addresses: the server of every run (`--ipv6` picks the second).
const SERVER_IPS: [&str; 2] = ["10.99.0.3", "fd99::3"];

/// Removes the bench topology on drop (also on error or panic).
struct Topology;

impl Topology {
    fn create() -> Result<Topology> {
        let t = Topology;
        t.cleanup();
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", "10.99.0.1/24", "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for (ns, host_if, addr, addr6) in PODS {
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
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(t)
    }

    fn cleanup(&self) {
        for (ns, host_if, _, _) in PODS {
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

/// Which CPUs the two pods' processes run on. veth delivery runs the receive path (and the
/// hooks) on the sending CPU, so this decides whether a flow's map entry stays on one CPU or
/// moves between two for every packet — the largest single influence on the figures here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    /// Label in the report.
    label: &'static str,
    /// CPU of the client (pod a: iperf3 -c, the request/response client thread).
    client_cpu: usize,
    /// CPU of the server (pod b: iperf3 -s, the request/response server thread).
    server_cpu: usize,
}

/// Both pods on CPU 1; client on CPU 0 and server on CPU 1.
const PLACEMENTS: [Placement; 2] = [
    Placement {
        label: "same-cpu",
        client_cpu: 1,
        server_cpu: 1,
    },
    Placement {
        label: "cross-cpu",
        client_cpu: 0,
        server_cpu: 1,
    },
];

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read/write that set; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
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
    /// The agent of the `--baseline` binary (only with `--baseline`).
    BaselineAgent,
}

/// The arms of every round: [`Arm::BaselineAgent`] is added with `--baseline`.
const ARMS: [Arm; 3] = [Arm::Bare, Arm::Noop, Arm::Agent];

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Bare => "no hooks",
            Arm::Noop => "no-op hooks",
            Arm::Agent => "agent",
            Arm::BaselineAgent => "baseline agent",
        }
    }

    /// Starts what this arm attaches (nothing for [`Arm::Bare`]); [`Arm::BaselineAgent`] runs
    /// `baseline` (or `bin` when there is none); the no-op arm runs `hooks`
    /// (`netpol-observe-bench`).
    fn start(self, bin: &Path, baseline: Option<&Path>, hooks: &Path) -> Result<Option<Attached>> {
        const AGENT: &[&str] = &["agent", "--interfaces", "nbv*", "--output", "jsonl"];
        match self {
            Arm::Bare => Ok(None),
            Arm::Noop => {
                Attached::start(hooks, &["hooks", "noop", "--interfaces", "nbv*"]).map(Some)
            }
            Arm::Agent => Attached::start(bin, AGENT).map(Some),
            Arm::BaselineAgent => Attached::start(baseline.unwrap_or(bin), AGENT).map(Some),
        }
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

/// Pause after an arm's programs are attached (and before a no-hooks run, alike) so that the
/// agent's start-up work (socket scan, first sweeps, interface listing) is over before the
/// measurement starts.
const SETTLE: Duration = Duration::from_millis(1000);

/// Seconds at the start of an iperf3 run left out of its result (`-O`: slow start, GSO
/// ramp-up).
const IPERF_OMIT_SECONDS: &str = "1";

/// Time at the start of a request/response run left out of its rate (connection set-up, the
/// flow's first packets on the programs' general path, cold caches).
const RR_WARMUP: Duration = Duration::from_millis(500);

/// iperf3 TCP stream from pod a to pod b, each pinned as `placement` says; Gbit/s received.
fn throughput(placement: Placement, traffic: &Traffic) -> Result<f64> {
    let server_cpu = placement.server_cpu.to_string();
    let client_cpu = placement.client_cpu.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            "nb-b",
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5201",
            "-A",
            &server_cpu,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            "nb-a",
            "iperf3",
            "-c",
            &traffic.server.to_string(),
            "-p",
            "5201",
            "-A",
            &client_cpu,
            "-J",
            "-O",
            IPERF_OMIT_SECONDS,
            "-t",
        ])
        .arg(traffic.seconds.to_string())
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

/// 1-byte TCP request/response between the pods over `flows` connections, one transaction
/// on each in turn (`--flows`: many concurrent flows share the programs' per-CPU entries),
/// the client and the server threads pinned as `placement` says; transactions per second.
/// With `hooks` (`netpol-observe-bench`), also the kernel's statistics of the programs on the
/// pods' interfaces over the measured window only (after the connections are set up and
/// warmed up, before they close): see [`Cost`].
fn request_response(
    placement: Placement,
    traffic: &Traffic,
    hooks: Option<&Path>,
) -> Result<(f64, Option<Cost>)> {
    let (seconds, flows, server_ip) = (traffic.seconds, traffic.flows, traffic.server);
    let listener = std::thread::spawn(|| -> Result<TcpListener> {
        enter("nb-b")?;
        Ok(TcpListener::bind("[::]:5300")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
    let server = std::thread::spawn(move || -> Result<()> {
        pin_thread(placement.server_cpu)?;
        let mut echoes = Vec::with_capacity(flows);
        for _ in 0..flows {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            echoes.push(std::thread::spawn(move || -> Result<()> {
                pin_thread(placement.server_cpu)?;
                let mut b = [0u8; 1];
                while s.read(&mut b)? == 1 {
                    s.write_all(&b)?;
                }
                Ok(())
            }));
        }
        for e in echoes {
            e.join()
                .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        }
        Ok(())
    });
    let (to_main, from_client) = std::sync::mpsc::channel::<f64>();
    let (to_client, from_main) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || -> Result<f64> {
        enter("nb-a")?;
        pin_thread(placement.client_cpu)?;
        let addr = SocketAddr::new(server_ip, 5300);
        let mut conns = (0..flows)
            .map(|_| {
                let c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                c.set_nodelay(true)?;
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut b = [0u8; 1];
        let mut transact = |i: u64| -> Result<()> {
            let c = &mut conns[(i % flows as u64) as usize];
            c.write_all(&[1])?;
            c.read_exact(&mut b)?;
            Ok(())
        };
        let warm_end = Instant::now() + RR_WARMUP;
        let mut i: u64 = 0;
        while Instant::now() < warm_end {
            transact(i)?;
            i += 1;
        }
        // The main thread snapshots the program statistics (outside this namespace).
        let _ = to_main.send(0.0);
        let _ = from_main.recv();
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let mut n: u64 = 0;
        while Instant::now() < end {
            transact(i + n)?;
            n += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        // The connections stay open until the main thread has read the statistics again.
        let _ = to_main.send(n as f64);
        let _ = from_main.recv();
        Ok(n as f64 / elapsed)
    });
    let mut cost = None;
    if let (Ok(_), Some(hooks)) = (from_client.recv(), hooks) {
        let s0 = prog_stats(hooks)?;
        let _ = to_client.send(());
        if let Ok(n) = from_client.recv() {
            let s1 = prog_stats(hooks)?;
            cost = Some(Cost::between(&s0, &s1, n));
        }
    }
    // Without `hooks` both waits are released at once.
    drop(to_client);
    let tps = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok((tps, cost))
}

/// The kernel's cost of the programs on the pods' interfaces over a request/response window.
#[derive(Debug, Clone)]
struct Cost {
    /// Kernel ns of all programs per transaction (`run_time_ns` / transactions): the
    /// datapath bar's figure.
    per_transaction: f64,
    /// Per program name: ns per run.
    per_run: Vec<(String, f64)>,
    /// Per program name: its sizes (xlated / jited bytes).
    sizes: String,
}

impl Cost {
    fn between(
        before: &std::collections::BTreeMap<u64, ProgStats>,
        after: &std::collections::BTreeMap<u64, ProgStats>,
        transactions: f64,
    ) -> Cost {
        let mut per_run = Vec::new();
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
            per_run.push((a.name.clone(), per));
        }
        let sizes = after
            .values()
            .map(|p| format!("{} {} B xlated / {} B jited", p.name, p.xlated, p.jited))
            .collect::<Vec<_>>()
            .join(", ");
        Cost {
            per_transaction: if transactions > 0.0 {
                total as f64 / transactions
            } else {
                0.0
            },
            per_run,
            sizes,
        }
    }
}

/// The traffic of every run.
struct Traffic {
    seconds: u64,
    /// Connections of the request/response runs (`--flows`, default 1).
    flows: usize,
    /// Pod b's IPv4 address, or its IPv6 address with `--ipv6`.
    server: IpAddr,
}

/// What every run of a benchmark invocation shares.
struct RunSetup<'a> {
    bin: &'a Path,
    /// `netpol-observe-bench` (the no-op arm, program statistics).
    hooks: &'a Path,
    baseline: Option<&'a Path>,
    /// Leave the throughput runs out (`--rr-only`).
    rr_only: bool,
    traffic: Traffic,
}

/// One run of `arm`: throughput (NaN with `--rr-only`), request/response rate and, for a
/// hooked arm, the programs' kernel cost over the request/response window.
fn measure(
    arm: Arm,
    setup: &RunSetup<'_>,
    placement: Placement,
) -> Result<(f64, f64, Option<Cost>)> {
    let attached = arm.start(setup.bin, setup.baseline, setup.hooks)?;
    std::thread::sleep(SETTLE);
    let t = if setup.rr_only {
        f64::NAN
    } else {
        throughput(placement, &setup.traffic)?
    };
    let hooks = attached.as_ref().map(|_| setup.hooks);
    let (rr, cost) = request_response(placement, &setup.traffic, hooks)?;
    if let Some(a) = attached {
        a.stop()?;
    }
    Ok((t, rr, cost))
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
    let mut args = vec!["hooks", "stats"];
    args.extend(PODS.iter().map(|p| p.1));
    let out = Command::new(bin)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running netpol-observe-bench hooks stats")?;
    if !out.status.success() {
        bail!("netpol-observe-bench hooks stats failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing netpol-observe-bench hooks stats")?;
    let mut m = std::collections::BTreeMap::new();
    for p in v
        .as_array()
        .context("netpol-observe-bench hooks stats: not an array")?
    {
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

/// Per placement, the throughput and request/response runs of every arm.
struct PlacementRuns {
    placement: Placement,
    tput: Arms,
    rr: Arms,
    /// Kernel ns of programs per transaction, per arm (the no-hooks arm's stay empty).
    ns: Arms,
    /// Per arm: every run's cost (ns per run of each program, sizes).
    costs: Vec<Vec<Cost>>,
}

/// The options of [`run`] (see the module documentation).
#[derive(Default)]
struct Options {
    /// `--baseline`: a baseline agent binary, measured as one more arm.
    baseline: Option<PathBuf>,
    /// `--bin`: the agent binary (default: the release build).
    bin: Option<PathBuf>,
    /// `--hooks`: the bench binary with the no-op hooks (default: its build).
    hooks: Option<PathBuf>,
    rr_only: bool,
    /// `--flows`: connections in turn.
    flows: usize,
    ipv6: bool,
    placements: Vec<Placement>,
    /// `--dns-cost`: run [`super::dns_cost`] instead.
    dns_cost: bool,
    /// `--baseline-object`: for `--dns-cost`.
    baseline_object: Option<PathBuf>,
}

impl Options {
    /// Reads `extra` (the options after the benchmark's name).
    fn parse(extra: &[String]) -> Result<Options> {
        let mut o = Options {
            flows: 1,
            placements: PLACEMENTS.to_vec(),
            ..Options::default()
        };
        let mut args = extra.iter();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--dns-cost" => o.dns_cost = true,
                "--rr-only" => o.rr_only = true,
                "--ipv6" => o.ipv6 = true,
                "--flows" => {
                    o.flows = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n >= 1)
                        .context("datapath: --flows needs a number of connections (at least 1)")?;
                }
                "--placement" => {
                    let label = args.next().context("datapath: --placement needs a label")?;
                    o.placements.retain(|p| p.label == label.as_str());
                    if o.placements.is_empty() {
                        bail!(
                            "datapath: unknown placement {label} (expected same-cpu / cross-cpu)"
                        );
                    }
                }
                _ => {
                    let path = args
                        .next()
                        .map(PathBuf::from)
                        .with_context(|| format!("datapath: {flag} needs a path"))?;
                    match flag.as_str() {
                        "--baseline" => o.baseline = Some(path),
                        "--bin" => o.bin = Some(path),
                        "--hooks" => o.hooks = Some(path),
                        "--baseline-object" => o.baseline_object = Some(path),
                        other => bail!(
                            "datapath: unknown argument {other} (expected --baseline / --bin / \
                             --hooks PATH, --placement LABEL, --rr-only, --flows N, --ipv6, \
                             --dns-cost, --baseline-object PATH)"
                        ),
                    }
                }
            }
        }
        Ok(o)
    }
}

impl PlacementRuns {
    /// No runs yet in `placement`, for the arms `labels`.
    fn new(
        placement: Placement,
        labels: &[&'static str],
        seconds: u64,
        flows: usize,
        ipv6: bool,
    ) -> Self {
        let family = if ipv6 { "/IPv6" } else { "" };
        PlacementRuns {
            placement,
            tput: Arms::new(
                format!(
                    "[{}] iperf3 TCP{family} throughput, Gbit/s ({seconds} s runs)",
                    placement.label
                ),
                labels,
            ),
            rr: Arms::new(
                format!(
                    "[{}] TCP{family} request/response, transactions/s ({seconds} s runs, \
                     {flows} connection(s) in turn)",
                    placement.label
                ),
                labels,
            ),
            ns: Arms::new(
                format!(
                    "[{}] TCP{family} request/response, kernel ns of programs per transaction \
                     ({flows} connection(s) in turn)",
                    placement.label
                ),
                labels,
            ),
            costs: vec![Vec::new(); labels.len()],
        }
    }
}

/// Runs the datapath benchmark: `rounds` rounds, each measuring the three arms in a rotating
/// order in every placement, then the per-program costs. `extra` holds the options of the
/// module documentation (`--bin`, `--baseline`, `--placement`, `--rr-only`).
pub(super) fn run(root: &Path, rounds: usize, seconds: u64, extra: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!("the datapath benchmark creates namespaces and loads eBPF programs: run it as root");
    }
    let o = Options::parse(extra)?;
    let bin = match o.bin {
        Some(b) => b,
        None => super::release_binary(root)?,
    };
    let hooks = match o.hooks {
        Some(h) => h,
        None => super::bench_binary(root)?,
    };
    if o.dns_cost {
        return super::dns_cost::run(&hooks, rounds, o.baseline_object.as_deref());
    }
    let _topology = Topology::create()?;
    let mut arms = ARMS.to_vec();
    if o.baseline.is_some() {
        arms.push(Arm::BaselineAgent);
    }
    let labels: Vec<&str> = arms.iter().map(|a| a.label()).collect();
    let setup = RunSetup {
        bin: &bin,
        hooks: &hooks,
        baseline: o.baseline.as_deref(),
        rr_only: o.rr_only,
        traffic: Traffic {
            seconds,
            flows: o.flows,
            server: SERVER_IPS[usize::from(o.ipv6)].parse()?,
        },
    };
    let mut results: Vec<PlacementRuns> = o
        .placements
        .iter()
        .map(|&p| PlacementRuns::new(p, &labels, seconds, o.flows, o.ipv6))
        .collect();
    // For the whole run: every hooked run reads its programs' cost (the statistics add a
    // few ns per program run to every hooked arm alike).
    let _stats = BpfStats::enable()?;
    for round in 0..rounds {
        // Alternate which placement goes first, and rotate the arms' order (B N A, N A B,
        // A B N, ...) so drift hits every arm alike.
        for p in 0..results.len() {
            let n = results.len();
            let pr = &mut results[(round + p) % n];
            for k in 0..arms.len() {
                let i = (round + k) % arms.len();
                let (t, r, cost) = measure(arms[i], &setup, pr.placement)?;
                let per_tx = cost.as_ref().map_or(0.0, |c| c.per_transaction);
                eprintln!(
                    "round {}/{rounds} {:<9} {:<14} throughput {t:.2} Gbit/s, rr {r:.0}/s, \
                     {per_tx:.0} ns of programs per transaction",
                    round + 1,
                    pr.placement.label,
                    arms[i].label()
                );
                pr.tput.runs[i].push(t);
                pr.rr.runs[i].push(r);
                pr.ns.runs[i].push(per_tx);
                pr.costs[i].extend(cost);
            }
        }
    }
    println!("{}", bar_summary(&results, &arms, o.flows, o.ipv6));
    print_targets(&results, o.baseline.is_some(), o.rr_only);
    print_costs(&results, &arms);
    Ok(())
}

/// Prints every placement's throughput and request/response comparisons of the arms, and
/// whether the agent met its targets against no hooks.
fn print_targets(results: &[PlacementRuns], with_baseline: bool, rr_only: bool) {
    // Indices into the arms.
    let (bare, noop, agent, baseline_agent) = (0, 1, 2, 3);
    let mut comparisons = vec![(noop, bare), (agent, bare), (agent, noop)];
    if with_baseline {
        comparisons.extend([(baseline_agent, bare), (agent, baseline_agent)]);
    }
    let verdict = |ratio: f64, target: f64| if ratio >= target { "met" } else { "NOT met" };
    for pr in results {
        if !rr_only {
            println!("{}", pr.tput.report(&comparisons));
        }
        println!("{}", pr.rr.report(&comparisons));
        let throughput = if rr_only {
            String::new()
        } else {
            format!(
                "throughput >= 0.98 ({} / {}), ",
                verdict(pr.tput.ratio(agent, bare), 0.98),
                verdict(pr.tput.round_ratio(agent, bare), 0.98),
            )
        };
        println!(
            "[{}] targets (agent / no hooks, ratio of medians / median of round ratios): \
             {throughput}request/response >= 0.97 ({} / {})\n",
            pr.placement.label,
            verdict(pr.rr.ratio(agent, bare), 0.97),
            verdict(pr.rr.round_ratio(agent, bare), 0.97),
        );
    }
}

/// Prints per placement and hooked arm the ns per run of each program (median over rounds)
/// and the programs' sizes.
fn print_costs(results: &[PlacementRuns], arms: &[Arm]) {
    for pr in results {
        println!(
            "[{}] ns per program run (median over rounds):",
            pr.placement.label
        );
        for (i, arm) in arms.iter().enumerate() {
            let Some(last) = pr.costs[i].last() else {
                continue;
            };
            let programs = last
                .per_run
                .iter()
                .map(|(name, _)| {
                    let v: Vec<f64> = pr.costs[i]
                        .iter()
                        .flat_map(|c| c.per_run.iter().filter(|(n, _)| n == name))
                        .map(|(_, ns)| *ns)
                        .collect();
                    format!("{name} {:.1}", median(&v))
                })
                .collect::<Vec<_>>()
                .join(", ");
            println!("  {:<14} {programs}  ({})", arm.label(), last.sizes);
        }
    }
}

/// The datapath bar, printed first: per placement, the kernel ns of programs per
/// transaction of every hooked arm (median, min–max over rounds) and the agent's over the
/// no-op hooks' (median of the per-round ratios, min–max; target ≤ 1.3), and with
/// `--baseline` the baseline agent's and agent / baseline agent.
fn bar_summary(results: &[PlacementRuns], arms: &[Arm], flows: usize, ipv6: bool) -> String {
    let (noop, agent, baseline_agent) = (1, 2, 3);
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let mut out = format!(
        "DATAPATH BAR: kernel ns of programs per request/response transaction, {family}, \
         {flows} connection(s); agent / no-op hooks <= {BAR_RATIO}\n"
    );
    for pr in results {
        let rounds = pr.ns.runs[noop].len();
        let spread = |r: &[f64]| {
            format!(
                "{:.3} (min–max {:.3}–{:.3})",
                median(r),
                quantile(r, 0.0),
                quantile(r, 1.0)
            )
        };
        let r = pr.ns.round_ratios(agent, noop);
        let met = if median(&r) <= BAR_RATIO {
            "met"
        } else {
            "NOT met"
        };
        out += &format!(
            "  [{}] agent / no-op hooks {} over {rounds} rounds: {met}\n",
            pr.placement.label,
            spread(&r)
        );
        if arms.len() > baseline_agent {
            let rb = pr.ns.round_ratios(baseline_agent, noop);
            let ab = pr.ns.round_ratios(agent, baseline_agent);
            out += &format!(
                "  [{}] baseline agent / no-op hooks {}; agent / baseline agent {}\n",
                pr.placement.label,
                spread(&rb),
                spread(&ab)
            );
        }
        for (i, arm) in arms.iter().enumerate().skip(noop) {
            let v = &pr.ns.runs[i];
            out += &format!(
                "    {:<14} {:.0} ns (min–max {:.0}–{:.0})\n",
                arm.label(),
                median(v),
                quantile(v, 0.0),
                quantile(v, 1.0)
            );
        }
    }
    out
}

/// The datapath bar: the agent's programs at most this multiple of the no-op hooks' kernel
/// ns per transaction.
const BAR_RATIO: f64 = 1.3;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        Options::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_as_the_module_documents_them() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.flows, o.rr_only, o.ipv6, o.dns_cost),
            (1, false, false, false)
        );
        assert_eq!(o.placements.len(), PLACEMENTS.len());
        assert!(o.bin.is_none() && o.hooks.is_none() && o.baseline.is_none());

        let o = parse(&[
            "--rr-only",
            "--flows",
            "8",
            "--ipv6",
            "--placement",
            "cross-cpu",
            "--bin",
            "/b",
            "--hooks",
            "/h",
            "--baseline",
            "/old",
            "--dns-cost",
            "--baseline-object",
            "/o",
        ])
        .unwrap();
        assert_eq!(
            (o.flows, o.rr_only, o.ipv6, o.dns_cost),
            (8, true, true, true)
        );
        let labels: Vec<&str> = o.placements.iter().map(|p| p.label).collect();
        assert_eq!(labels, ["cross-cpu"]);
        assert_eq!(o.bin.as_deref(), Some(Path::new("/b")));
        assert_eq!(o.hooks.as_deref(), Some(Path::new("/h")));
        assert_eq!(o.baseline.as_deref(), Some(Path::new("/old")));
        assert_eq!(o.baseline_object.as_deref(), Some(Path::new("/o")));
    }

    #[test]
    fn bad_options_are_named() {
        for (args, want) in [
            (&["--flows", "0"][..], "--flows needs a number"),
            (
                &["--placement", "elsewhere"][..],
                "unknown placement elsewhere",
            ),
            (&["--placement"][..], "--placement needs a label"),
            (&["--bin"][..], "--bin needs a path"),
            (&["--nope", "x"][..], "unknown argument --nope"),
        ] {
            let err = parse(args).err().expect("an error").to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
