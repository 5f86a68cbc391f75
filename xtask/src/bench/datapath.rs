//! `cargo xtask bench datapath`: the cost of the eBPF datapath on pod traffic.
//!
//! Two namespaces ("pods") on a bridge, like a bridge CNI. Per A/B pair: an iperf3 TCP
//! stream (throughput) and a TCP request/response loop of 1-byte messages (transactions per
//! second), each once without and once with `netpol-observe agent` attached to both pods'
//! host interfaces; the order within a pair alternates. Reports every run, the medians and
//! their ratio.

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

use super::stats::AbResult;

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

/// The agent, attached; stopped with SIGINT on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(bin: &Path) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(["agent", "--interfaces", "nbv*", "--output", "jsonl"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the agent did not attach within 10 s");
            }
            match lines.next() {
                Some(Ok(l)) if l.contains("datapath attached") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.wait();
                    bail!("the agent exited before attaching");
                }
            }
        }
        // Keep draining stderr so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Agent { child })
    }

    fn stop(mut self) -> Result<()> {
        self.signal_and_wait()
    }

    fn signal_and_wait(&mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self.child.wait().context("waiting for the agent")?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Agent {
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

fn measure(with_agent: bool, bin: &Path, seconds: u64) -> Result<(f64, f64)> {
    let agent = if with_agent {
        Some(Agent::start(bin)?)
    } else {
        None
    };
    let t = throughput(seconds)?;
    let rr = request_response(seconds)?;
    if let Some(a) = agent {
        a.stop()?;
    }
    Ok((t, rr))
}

/// Runs the datapath benchmark.
pub fn run(root: &Path, pairs: usize, seconds: u64) -> Result<()> {
    if !crate::is_root() {
        bail!("the datapath benchmark creates namespaces and loads eBPF programs: run it as root");
    }
    let bin = super::release_binary(root)?;
    let _topology = Topology::create()?;
    let mut tput = AbResult {
        name: format!("iperf3 TCP throughput, Gbit/s ({seconds} s runs)"),
        ..AbResult::default()
    };
    let mut rr = AbResult {
        name: format!("TCP request/response, transactions/s ({seconds} s runs)"),
        ..AbResult::default()
    };
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let (t, r) = measure(with, &bin, seconds)?;
            eprintln!(
                "pair {}/{pairs} {:<13} throughput {t:.2} Gbit/s, rr {r:.0}/s",
                pair + 1,
                if with { "with agent" } else { "without agent" }
            );
            if with {
                tput.with.push(t);
                rr.with.push(r);
            } else {
                tput.base.push(t);
                rr.base.push(r);
            }
        }
    }
    println!("{}", tput.report());
    println!("{}", rr.report());
    println!(
        "targets: throughput ratio >= 0.98 ({}), request/response ratio >= 0.97 ({})",
        if tput.ratio() >= 0.98 {
            "met"
        } else {
            "NOT met"
        },
        if rr.ratio() >= 0.97 { "met" } else { "NOT met" }
    );
    Ok(())
}
