//! DNS names from real DNS answers on a real kernel: pods as network namespaces, a real DNS
//! server (UDP and TCP port 53) in one of them, the datapath's DNS-answer capture and the
//! agent's names on flows and rotation counter.

// Tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netpol_observe_agent::{
    agent::{ObservedFlow, dns::parse_answer},
    datapath::{Counter, Datapath, DatapathConfig, DnsAnswer},
};
use netpol_observe_e2e::{
    dns::{DnsServer, ZoneEntry, resolve},
    http::{free_port, get},
    netns::{Bridge, Pod},
    require_root,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The next DNS answer of `rx`, waiting as long as it takes (the test's overall timeout
/// bounds it).
async fn next_answer(rx: &mut tokio::sync::broadcast::Receiver<DnsAnswer>) -> DnsAnswer {
    rx.recv().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_to_pods_are_captured_over_udp_tcp_and_ipv6() {
    if !require_root("dns_answers_to_pods_are_captured_over_udp_tcp_and_ipv6") {
        return;
    }
    let br = Bridge::new(
        "dnA-br",
        "10.73.0.1/24".parse().unwrap(),
        "fd73::1/64".parse().unwrap(),
    )
    .unwrap();
    let c = Pod::on_bridge(
        "dnA-c",
        "dnAc0",
        &br,
        "10.73.0.2".parse::<Ipv4Addr>().unwrap(),
        "fd73::2".parse::<Ipv6Addr>().unwrap(),
    )
    .unwrap();
    let s = Pod::on_bridge(
        "dnA-s",
        "dnAs0",
        &br,
        "10.73.0.3".parse::<Ipv4Addr>().unwrap(),
        "fd73::3".parse::<Ipv6Addr>().unwrap(),
    )
    .unwrap();
    let zone = BTreeMap::from([
        (
            "api.example.com".to_owned(),
            ZoneEntry::Addrs(vec![ip("203.0.113.10")], 30),
        ),
        (
            "db.example.com".to_owned(),
            ZoneEntry::Cname("db-1.example.net".to_owned(), 60),
        ),
        (
            "db-1.example.net".to_owned(),
            ZoneEntry::Addrs(vec![ip("198.51.100.4")], 20),
        ),
        (
            "v6.example.com".to_owned(),
            ZoneEntry::Addrs(vec![ip("2001:db8::10")], 40),
        ),
    ]);
    let dns4 = DnsServer::start(&s, IpAddr::V4(s.v4), zone.clone()).unwrap();
    let dns6 = DnsServer::start(&s, IpAddr::V6(s.v6), zone).unwrap();
    let dp = Datapath::start(DatapathConfig {
        sweep_interval: Duration::from_secs(3600),
        ..DatapathConfig::with_interfaces(["dnA?0"])
    })
    .await
    .unwrap();
    let mut rx = dp.subscribe_dns();
    let (c4, c6) = (IpAddr::V4(c.v4), IpAddr::V6(c.v6));
    let (s4, s6) = (IpAddr::V4(s.v4), IpAddr::V6(s.v6));

    let cases = [
        // (server, name, AAAA, TCP, want addresses, want names, want TTL)
        (
            s4,
            "api.example.com",
            false,
            false,
            "203.0.113.10",
            vec!["api.example.com"],
            30,
        ),
        (
            s4,
            "db.example.com",
            false,
            true,
            "198.51.100.4",
            vec!["db-1.example.net", "db.example.com"],
            20,
        ),
        (
            s6,
            "v6.example.com",
            true,
            false,
            "2001:db8::10",
            vec!["v6.example.com"],
            40,
        ),
        (
            s6,
            "api.example.com",
            false,
            true,
            "203.0.113.10",
            vec!["api.example.com"],
            30,
        ),
    ];
    for (server, name, v6, tcp, want, names, ttl) in cases {
        let (addrs, _) = resolve(&c, server, name, v6, tcp).unwrap();
        assert_eq!(addrs, vec![ip(want)], "{name}");
        let a = next_answer(&mut rx).await;
        let client = if server.is_ipv6() { c6 } else { c4 };
        assert_eq!((a.client, a.server, a.tcp), (client, server, tcp), "{name}");
        assert_eq!(a.payload_len as usize, a.payload.len(), "{name}");
        let r = parse_answer(&a.payload, a.tcp, a.payload_len)
            .unwrap()
            .unwrap();
        assert_eq!(r.question, name);
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(r.addresses, vec![(ip(want), names, ttl)], "{name}");
    }
    // Exactly one answer per query: the query packets (to port 53), the TCP handshakes and
    // the server's own interface are not captured, and nothing was lost.
    let counters = dp.kernel_counters().unwrap();
    assert_eq!(counters.get(Counter::DnsAnswers), 4);
    assert_eq!(counters.get(Counter::DnsRingbufFull), 0);
    assert!(rx.try_recv().is_err());
    drop((dns4, dns6));
    dp.shutdown().await.unwrap();
}

/// A child process killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (polling) until `f` returns `Some`, or panics after `timeout` with `what` and the
/// agent's log.
fn wait_for<T>(what: &str, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP connection from `client` to `server` (`addr`:`port`), one message each way; returns
/// the client's local address.
fn connect(client: &Pod, server: &Pod, addr: IpAddr, port: u16) -> SocketAddr {
    let dst = SocketAddr::new(addr, port);
    let listener = server.run(move || TcpListener::bind(dst).unwrap());
    let t = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
        c.write_all(b"ok").unwrap();
    });
    let local = client.run(move || {
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(20)).unwrap();
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
        c.local_addr().unwrap()
    });
    t.join().unwrap();
    local
}

/// The served flow from `src` (address and port), once the agent has it.
fn served_flow(listen: SocketAddr, log: &Path, src: SocketAddr) -> ObservedFlow {
    wait_for(&format!("the flow from {src}"), log, || {
        let (code, body) = get(listen, "/api/v1/flows")?;
        assert_eq!(code, 200, "{body}");
        body.lines()
            .map(|l| serde_json::from_str::<ObservedFlow>(l).unwrap())
            .find(|f| f.flow.src.ip == src.ip() && f.flow.src.port == Some(src.port()))
    })
}

/// The value of the sample `series` (name and labels exactly as served) on `/metrics`, 0 when
/// absent.
fn sample(listen: SocketAddr, series: &str) -> u64 {
    let (code, body) = get(listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const ROTATIONS: &str = r#"netpol_observe_dns_rotations_total{namespace="shop",kind="Pod",workload="web",policy="shop/web-egress"}"#;

// One scenario: each step depends on the names and rotations the one agent learned in the
// steps before.
#[test]
fn agent_names_flows_from_dns_answers_and_counts_rotations_once() {
    if !require_root("agent_names_flows_from_dns_answers_and_counts_rotations_once") {
        return;
    }
    let br = Bridge::new(
        "dnB-br",
        "10.74.0.1/24".parse().unwrap(),
        "fd74::1/64".parse().unwrap(),
    )
    .unwrap();
    let pod = |ns: &str, host: &str, i: u8| {
        Pod::on_bridge(
            ns,
            host,
            &br,
            Ipv4Addr::new(10, 74, 0, i),
            format!("fd74::{i}").parse().unwrap(),
        )
        .unwrap()
    };
    let web = pod("dnB-web", "dnBw0", 2);
    let dns = pod("dnB-dns", "dnBd0", 3);
    // Outside hosts the names resolve to.
    let ext4 = pod("dnB-x4", "dnBx0", 4);
    let ext5 = pod("dnB-x5", "dnBy0", 5);
    let ext6 = pod("dnB-x6", "dnBz0", 6);
    let a = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 74, 0, i));
    let server = DnsServer::start(
        &dns,
        a(3),
        BTreeMap::from([
            (
                "api.example.com".to_owned(),
                ZoneEntry::Addrs(vec![a(4)], 30),
            ),
            (
                "db.example.com".to_owned(),
                ZoneEntry::Cname("db-1.example.net".to_owned(), 30),
            ),
            (
                "db-1.example.net".to_owned(),
                ZoneEntry::Addrs(vec![a(5)], 30),
            ),
            (
                "short.example.com".to_owned(),
                ZoneEntry::Addrs(vec![a(6)], 2),
            ),
        ]),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    std::fs::write(
        dir.path().join("inventory.yaml"),
        r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.74.0.2, podIPs: [{ip: 10.74.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: shop, labels: {app: dns}}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.74.0.3, podIPs: [{ip: 10.74.0.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-egress
  namespace: shop
  annotations:
    netpol-observe.io/dns-names: '{"10.74.0.4/32": ["api.example.com"]}'
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.74.0.4/32}}]
    ports: [{port: 8080, protocol: TCP}]
  - to: [{podSelector: {matchLabels: {app: dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#,
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = Proc(
        Command::new(netpol_observe_e2e::bin())
            .args(["agent", "--listen", &listen.to_string(), "--inventory"])
            .arg(dir.path().join("inventory.yaml"))
            .args([
                "--node-name",
                "node-1",
                "--sweep-interval",
                "1s",
                "--output",
                "none",
                "--interfaces",
                "dnB?0",
                "--dns-grace",
                "3s",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent to be ready", &log, || {
        matches!(get(listen, "/readyz"), Some((200, _))).then_some(())
    });

    // UDP: the name asked.
    let (addrs, _) = resolve(&web, a(3), "api.example.com", false, false).unwrap();
    assert_eq!(addrs, vec![a(4)]);
    let src = connect(&web, &ext4, a(4), 8080);
    let f = served_flow(listen, &log, src);
    assert_eq!(f.flow.dst.ip, a(4));
    assert_eq!(f.flow.dst.dns_names, vec!["api.example.com".to_owned()]);
    assert_eq!(f.dns_rotation, None);
    // The DNS flow itself names nothing.
    assert_eq!(sample(listen, ROTATIONS), 0);

    // TCP, through a CNAME: both names.
    let (addrs, _) = resolve(&web, a(3), "db.example.com", false, true).unwrap();
    assert_eq!(addrs, vec![a(5)]);
    let src = connect(&web, &ext5, a(5), 8081);
    let f = served_flow(listen, &log, src);
    assert_eq!(
        f.flow.dst.dns_names,
        vec!["db-1.example.net".to_owned(), "db.example.com".to_owned()]
    );
    // The DNS server's own flows carry no names (nobody resolved its address).
    let (_, body) = get(listen, "/api/v1/flows").unwrap();
    for l in body.lines() {
        let f: ObservedFlow = serde_json::from_str(l).unwrap();
        if f.flow.dst.ip == a(3) {
            assert!(f.flow.dst.dns_names.is_empty(), "{l}");
        }
    }

    // TTL 2s + grace 3s: named now, not after 5s.
    resolve(&web, a(3), "short.example.com", false, false).unwrap();
    let answered = Instant::now();
    let src = connect(&web, &ext6, a(6), 8082);
    let named_within = answered.elapsed();
    let f = served_flow(listen, &log, src);
    if named_within < Duration::from_secs(5) {
        assert_eq!(f.flow.dst.dns_names, vec!["short.example.com".to_owned()]);
    }
    std::thread::sleep(Duration::from_secs(5).saturating_sub(answered.elapsed()));
    let src = connect(&web, &ext6, a(6), 8083);
    let f = served_flow(listen, &log, src);
    assert!(f.flow.dst.dns_names.is_empty(), "{:?}", f.flow.dst);

    // The rotation: api.example.com moves outside the policy's ipBlock for it. Counted when
    // the answer arrives, before any connection; once per new address.
    server.set("api.example.com", ZoneEntry::Addrs(vec![a(6)], 30));
    resolve(&web, a(3), "api.example.com", false, false).unwrap();
    wait_for("the rotation to be counted", &log, || {
        (sample(listen, ROTATIONS) == 1).then_some(())
    });
    resolve(&web, a(3), "api.example.com", false, true).unwrap();
    let src = connect(&web, &ext6, a(6), 8084);
    let f = served_flow(listen, &log, src);
    assert_eq!(f.flow.dst.dns_names, vec!["api.example.com".to_owned()]);
    let r = f.dns_rotation.expect("dns_rotation on the flow");
    assert_eq!(
        (r.policy.as_str(), r.name.as_str()),
        ("shop/web-egress", "api.example.com")
    );
    assert_eq!(sample(listen, ROTATIONS), 1);
    // Back inside: nothing; to another outside address: counted once more.
    server.set("api.example.com", ZoneEntry::Addrs(vec![a(4)], 30));
    resolve(&web, a(3), "api.example.com", false, false).unwrap();
    server.set("api.example.com", ZoneEntry::Addrs(vec![a(5)], 30));
    resolve(&web, a(3), "api.example.com", false, false).unwrap();
    wait_for("the second rotation to be counted", &log, || {
        (sample(listen, ROTATIONS) == 2).then_some(())
    });
    // Every answer read, none lost or malformed.
    let answers = sample(listen, "netpol_observe_dns_answers_total");
    assert_eq!(answers, 7);
    assert_eq!(sample(listen, "netpol_observe_dns_parse_errors_total"), 0);
    assert_eq!(sample(listen, "netpol_observe_dns_answers_lost_total"), 0);
}
