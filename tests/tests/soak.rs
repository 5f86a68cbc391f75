//! The soak tier (`cargo xtask soak [--minutes N]`; ignored in the default run): the agent
//! binary, standalone, on two routed pods for N minutes (default 10) while
//! - the client pod opens ~100k UDP flows (one datagram each, a fresh source port each) to the
//!   server pod, spread over the run (source ports in turn, each back only after its flow
//!   expired);
//! - the inventory file changes every few seconds (pods added, relabelled and removed: churn
//!   the agent reloads).
//!
//! The agent's flow store is bounded (`maxFlows` 20,000 and `flowRetention` 60 s here, so it
//! reaches its steady size within the first half of the run). It requires: the agent counted every flow (`netpol_observe_flows_total` of the pair equals
//! the flows sent: none lost), its RSS stayed flat (the second half's peak within 20 % + 8 MiB
//! of the first half's), every reload was applied, and it exited within 5 s of SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use netpol_observe_e2e::http::get;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netpol_observe_e2e::netns::Pod;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The inventory: the two real pods plus `extra` churning pods (relabelled by `generation`).
fn inventory(pods: &[&Pod], extra: usize, generation: usize) -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: soak}\n");
    for (name, p) in ["client", "server"].iter().zip(pods) {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: soak, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: x}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n",
            ip = p.v4
        ));
    }
    for i in 0..extra {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: churn-{g}-{i}, namespace: soak, labels: {{app: churn, gen: g{g}}}}}\n\
             spec: {{nodeName: node-2, containers: [{{name: c, image: x}}]}}\n\
             status: {{phase: Running, podIP: 10.{a}.{b}.{c}}}\n",
            g = generation,
            a = 120 + (i / 65536),
            b = (i / 256) % 256,
            c = i % 256
        ));
    }
    y
}

// One scenario: the load, the churn and the measurements run together against one agent.
#[test]
#[ignore = "the soak tier: cargo xtask soak"]
fn agent_soak() {
    if !netpol_observe_e2e::require_root("agent_soak") {
        return;
    }
    let minutes: u64 = std::env::var("NETPOL_OBSERVE_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let flows_total: u64 = std::env::var("NETPOL_OBSERVE_SOAK_FLOWS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(100_000);
    let run = Duration::from_secs(minutes * 60);
    let client = Pod::routed(
        "npo-soak-c",
        "vsoak0",
        [10, 77, 0, 10].into(),
        "fd77::a".parse().unwrap(),
    )
    .unwrap();
    let server = Pod::routed(
        "npo-soak-s",
        "vsoak1",
        [10, 77, 0, 11].into(),
        "fd77::b".parse().unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    let write_inventory = |extra: usize, generation: usize| {
        let tmp = dir.path().join("inventory.tmp");
        std::fs::write(&tmp, inventory(&[&client, &server], extra, generation)).unwrap();
        std::fs::rename(&tmp, &inv).unwrap();
    };
    write_inventory(1000, 0);
    let listen = SocketAddr::from((
        [127, 0, 0, 1],
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    ));
    // The store's bound (maxFlows, default 100k) reached within the first half, and ended flows
    // leave it a minute after they end (default 10 min): with the defaults the store would
    // still be filling at the end of a 10-minute run, and RSS with it, by design.
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "flowRetention: 60s\nmaxFlows: 20000\n").unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Agent(
        Command::new(netpol_observe_e2e::bin())
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &listen.to_string()])
            .arg("--inventory")
            .arg(&inv)
            .args(["--node-name", "node-1", "--interfaces", "vsoak*"])
            .args(["--sweep-interval", "2s", "--inventory-poll-interval", "1s"])
            .args(["--flow-map-capacity", "262144", "--output", "none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !matches!(get(listen, "/readyz"), Some((200, _))) {
        assert!(start.elapsed() < Duration::from_secs(60), "agent not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = agent.0.id();

    // The server pod discards datagrams; the client sends one per flow from a fresh port.
    let dst = SocketAddr::from((server.v4, 9999));
    let _sink = server.run(move || UdpSocket::bind(dst).unwrap());
    let sender = client.spawn(move || {
        let begin = Instant::now();
        let mut sent = 0u64;
        while sent < flows_total {
            // Spread over the run: where the sending should be by now.
            let due = (flows_total as f64 * begin.elapsed().as_secs_f64() / run.as_secs_f64())
                .ceil() as u64;
            if sent >= due.min(flows_total) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            // Source ports in turn (not the kernel's random pick): a port comes back only
            // after 50,000 others, long after its earlier flow expired (120 s idle) at the
            // default rate (100k flows in 10 min: every 300 s).
            let port = 10_000 + (sent % 50_000) as u16;
            let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.send_to(b"soak", dst).unwrap();
            sent += 1;
        }
        sent
    });

    // Churn: every 5 s a new generation of pods (relabelled, 10 % fewer or more).
    let mut rss = Vec::new();
    let mut generation = 0;
    while start.elapsed() < run {
        std::thread::sleep(Duration::from_secs(5));
        generation += 1;
        write_inventory(900 + (generation % 3) * 100, generation);
        rss.push((start.elapsed(), rss_kib(pid)));
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited during the soak"
        );
    }
    let sent = sender.join().unwrap();
    // Every flow counted (the sweep after the last datagrams, then the metric).
    let counted = || -> u64 {
        let (_, body) = get(listen, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| {
                l.starts_with("netpol_observe_flows_total{")
                    && l.contains("src_workload=\"client\"")
                    && l.contains("dst_port=\"9999\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while counted() < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = counted();
    let half = rss.len() / 2;
    let peak = |s: &[(Duration, u64)]| s.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let (first, second) = (peak(&rss[..half]), peak(&rss[half..]));
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let reloads = log.matches("inventory reloaded").count();
    eprintln!(
        "soak: {minutes} min, {sent} flows sent, {got} counted, RSS peak first half {first} KiB, \
         second half {second} KiB, {generation} inventory generations, {reloads} reloads"
    );
    assert_eq!(got, sent, "flows lost");
    assert!(
        second <= first + first / 5 + 8 * 1024,
        "RSS grew: {first} KiB → {second} KiB ({rss:?})"
    );
    assert!(
        reloads >= generation / 2,
        "{reloads} reloads for {generation} changes"
    );

    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("soak: exited {:?} after SIGTERM", t.elapsed());
    assert!(status.success());
}
