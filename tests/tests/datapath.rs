//! The eBPF flow datapath on a real kernel: pods as network namespaces, real traffic, exact
//! flows, counts and states. Each test names its interfaces with its own prefix (`dpA`,
//! `dpB`, `dpC`, …) so tests can run in parallel; everything is removed on drop.

// Tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use netpol_observe_agent::datapath::{
    AttachMode, Counter, Datapath, DatapathConfig, DropScope, DropTracer, FlowUpdate,
};
use netpol_observe_core::flow::{Directional, FlowRecord, FlowState, Protocol};
use netpol_observe_e2e::{
    netns::{Bridge, Pod, Route, attachments},
    require_root,
    tcx::{TCX_PASS, VerdictProgram},
    traffic::{TcpCounters, ping, tcp_counters},
};

fn flows_of(
    flows: &[FlowRecord],
    protocol: Protocol,
    src: IpAddr,
    dst: IpAddr,
    dport: Option<u16>,
) -> Vec<&FlowRecord> {
    flows
        .iter()
        .filter(|f| {
            f.protocol == protocol
                && f.src.ip == src
                && f.dst.ip == dst
                && (dport.is_none() || f.dst.port == dport)
        })
        .collect()
}

fn the_flow(
    flows: &[FlowRecord],
    protocol: Protocol,
    src: IpAddr,
    dst: IpAddr,
    dport: Option<u16>,
) -> &FlowRecord {
    let found = flows_of(flows, protocol, src, dst, dport);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {protocol} flow {src} -> {dst}:{dport:?}, got {found:#?}\nall flows: {flows:#?}"
    );
    // The reverse direction must not appear as a flow of its own.
    let reversed: Vec<_> = flows_of(flows, protocol, dst, src, None)
        .into_iter()
        .filter(|f| f.src.port == dport && f.dst.port == found[0].src.port)
        .collect();
    assert!(
        reversed.is_empty(),
        "{protocol} {src} -> {dst} also reported reversed: {reversed:#?}"
    );
    found[0]
}

/// A TCP exchange: the client sends `up` bytes, the server answers `down` bytes, both close
/// with FIN. Returns the client address and both sides' TCP_INFO after the close.
fn tcp_exchange(
    client: &Pod,
    server: &Pod,
    dst: SocketAddr,
    up: usize,
    down: usize,
) -> (SocketAddr, TcpCounters, TcpCounters) {
    let any = if dst.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let listener = server.run(move || TcpListener::bind(SocketAddr::new(any, dst.port())).unwrap());
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = vec![0u8; up];
        s.read_exact(&mut got).unwrap();
        for chunk in vec![7u8; down].chunks(2000) {
            s.write_all(chunk).unwrap();
        }
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        s.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tcp_counters(&s).unwrap()
    });
    let (local, ci) = client.run(move || {
        // Generous under load: a connection between namespaces, not a timing claim.
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(20)).unwrap();
        c.set_nodelay(true).unwrap();
        for chunk in vec![1u8; up].chunks(1000) {
            c.write_all(chunk).unwrap();
        }
        let mut got = vec![0u8; down];
        c.read_exact(&mut got).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        (c.local_addr().unwrap(), tcp_counters(&c).unwrap())
    });
    let si = srv.join().unwrap();
    (local, ci, si)
}

/// UDP: the client sends `n` datagrams of `size` bytes, the server echoes each.
fn udp_echo(client: &Pod, server: &Pod, dst: SocketAddr, n: usize, size: usize) -> SocketAddr {
    let sock = server.run(move || UdpSocket::bind(dst).unwrap());
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let (len, from) = sock.recv_from(&mut buf).unwrap();
            sock.send_to(&buf[..len], from).unwrap();
        }
    });
    let local = client.run(move || {
        let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let c = UdpSocket::bind(any).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            c.send_to(&vec![3u8; size], dst).unwrap();
            c.recv_from(&mut buf).unwrap();
        }
        c.local_addr().unwrap()
    });
    srv.join().unwrap();
    local
}

fn config(pattern: &str) -> DatapathConfig {
    DatapathConfig {
        sweep_interval: Duration::from_secs(3600),
        node_name: Some("node-test".into()),
        ..DatapathConfig::with_interfaces([pattern])
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const IPV4_TCP_HDR: u64 = 20 + 32; // IPv4 + TCP with timestamps
const IPV6_TCP_HDR: u64 = 40 + 32;
const SYN_EXTRA: u64 = 8; // SYN options (mss, sack-perm, timestamps, wscale) beyond timestamps

// One datapath run: every exchange is checked in its one snapshot, then the update stream and
// the shutdown against those totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_pods_exact_flows_counted_once() {
    if !require_root("bridge_pods_exact_flows_counted_once") {
        return;
    }
    let br = Bridge::new(
        "dpA-br",
        "10.71.0.1/24".parse().unwrap(),
        "fd71::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpA-a", "dpAa0", &br, v4("10.71.0.2"), v6("fd71::2")).unwrap();
    let b = Pod::on_bridge("dpA-b", "dpAb0", &br, v4("10.71.0.3"), v6("fd71::3")).unwrap();
    let (a4, a6, b4, b6) = (
        IpAddr::V4(a.v4),
        IpAddr::V6(a.v6),
        IpAddr::V4(b.v4),
        IpAddr::V6(b.v6),
    );

    // Same-node dedup driven by userspace alone (no kernel learning).
    let cfg = DatapathConfig {
        learn_local_endpoints: false,
        ..config("dpA?0")
    };
    let dp = Datapath::start(cfg).await.unwrap();
    let mut updates = dp.subscribe();
    dp.set_local_endpoints(&[a4, a6, b4, b6]).unwrap();
    let mut names: Vec<String> = dp
        .attached_interfaces()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, ["dpAa0", "dpAb0"]);
    assert!(
        !attachments("dpAa0").unwrap().is_empty(),
        "attachment not visible"
    );

    let (tcp4_client, ci, si) = tcp_exchange(&a, &b, SocketAddr::new(b4, 7001), 10_000, 30_000);
    let (tcp6_client, ci6, si6) = tcp_exchange(&a, &b, SocketAddr::new(b6, 7003), 5_000, 1_000);
    let udp6_client = udp_echo(&a, &b, SocketAddr::new(b6, 7002), 5, 100);
    let udp4_client = udp_echo(&b, &a, SocketAddr::new(a4, 7004), 3, 50);
    assert_eq!(
        a.run(move || ping(b4, 0x7101, 3, 56, Duration::from_secs(10)).unwrap()),
        3
    );
    assert_eq!(
        a.run(move || ping(b6, 0x7102, 3, 56, Duration::from_secs(10)).unwrap()),
        3
    );
    // A closed TCP port: SYN answered by RST. A closed UDP port: ICMP port unreachable.
    let refused = a.run(move || {
        TcpStream::connect_timeout(&SocketAddr::new(b4, 7999), Duration::from_secs(20)).map(|_| ())
    });
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let udp_refused_client = a.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(&[0u8; 10], SocketAddr::new(b4, 7998)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        s.local_addr().unwrap()
    });

    dp.sweep_now().unwrap();
    let flows = dp.snapshot();

    let t = the_flow(&flows, Protocol::Tcp, a4, b4, Some(7001));
    assert_eq!(t.src.port, Some(tcp4_client.port()));
    assert_eq!(t.state, Some(FlowState::Closed));
    assert_eq!(t.node.as_deref(), Some("node-test"));
    let p = t.packets.unwrap();
    assert_eq!(
        (p.sent, p.received),
        (u64::from(ci.segs_out), u64::from(ci.segs_in)),
        "client view"
    );
    // The server socket's counters miss its SYN-ACK: the listener's request socket sent it.
    assert_eq!(
        (p.sent, p.received),
        (u64::from(si.segs_in), u64::from(si.segs_out) + 1),
        "server view"
    );
    assert_eq!(ci.bytes_sent, 10_000);
    assert_eq!(si.bytes_sent, 30_000);
    let bytes = t.bytes.unwrap();
    assert_eq!(
        bytes.sent,
        ci.bytes_sent + p.sent * IPV4_TCP_HDR + SYN_EXTRA
    );
    assert_eq!(
        bytes.received,
        si.bytes_sent + p.received * IPV4_TCP_HDR + SYN_EXTRA
    );

    let t6 = the_flow(&flows, Protocol::Tcp, a6, b6, Some(7003));
    assert_eq!(t6.src.port, Some(tcp6_client.port()));
    assert_eq!(t6.state, Some(FlowState::Closed));
    let p6 = t6.packets.unwrap();
    assert_eq!(
        (p6.sent, p6.received),
        (u64::from(ci6.segs_out), u64::from(si6.segs_out) + 1)
    );
    assert_eq!(
        t6.bytes.unwrap().sent,
        5_000 + p6.sent * IPV6_TCP_HDR + SYN_EXTRA
    );
    assert_eq!(
        t6.bytes.unwrap().received,
        1_000 + p6.received * IPV6_TCP_HDR + SYN_EXTRA
    );

    let u6 = the_flow(&flows, Protocol::Udp, a6, b6, Some(7002));
    assert_eq!(u6.src.port, Some(udp6_client.port()));
    assert_eq!(u6.state, Some(FlowState::Active));
    assert_eq!(
        u6.packets,
        Some(Directional {
            sent: 5,
            received: 5
        })
    );
    assert_eq!(
        u6.bytes,
        Some(Directional {
            sent: 5 * 148,
            received: 5 * 148
        })
    );

    // Initiated by b this time.
    let u4 = the_flow(&flows, Protocol::Udp, b4, a4, Some(7004));
    assert_eq!(u4.src.port, Some(udp4_client.port()));
    assert_eq!(
        u4.packets,
        Some(Directional {
            sent: 3,
            received: 3
        })
    );
    assert_eq!(
        u4.bytes,
        Some(Directional {
            sent: 3 * 78,
            received: 3 * 78
        })
    );

    let i4 = the_flow(&flows, Protocol::Icmp, a4, b4, None);
    assert_eq!(i4.state, Some(FlowState::Active));
    assert_eq!((i4.src.port, i4.dst.port), (None, None));
    assert_eq!(
        i4.packets,
        Some(Directional {
            sent: 3,
            received: 3
        })
    );
    assert_eq!(
        i4.bytes,
        Some(Directional {
            sent: 3 * 84,
            received: 3 * 84
        })
    );
    let i6 = the_flow(&flows, Protocol::Icmpv6, a6, b6, None);
    assert_eq!(
        i6.packets,
        Some(Directional {
            sent: 3,
            received: 3
        })
    );
    assert_eq!(
        i6.bytes,
        Some(Directional {
            sent: 3 * 104,
            received: 3 * 104
        })
    );

    let r = the_flow(&flows, Protocol::Tcp, a4, b4, Some(7999));
    assert_eq!(r.state, Some(FlowState::Refused));
    assert_eq!(
        r.packets,
        Some(Directional {
            sent: 1,
            received: 1
        })
    );
    let ur = the_flow(&flows, Protocol::Udp, a4, b4, Some(7998));
    assert_eq!(ur.src.port, Some(udp_refused_client.port()));
    assert_eq!(ur.state, Some(FlowState::Refused));
    assert_eq!(
        ur.packets,
        Some(Directional {
            sent: 1,
            received: 0
        })
    );

    let counters = dp.kernel_counters().unwrap();
    assert!(
        counters.get(Counter::SkippedLocal) > 0,
        "both pods are local: the second interface must skip"
    );
    assert_eq!(counters.get(Counter::MapInsertFailed), 0);
    assert_eq!(counters.get(Counter::RingbufFull), 0);
    assert_eq!(counters.get(Counter::ParseFailed), 0);
    assert_eq!(dp.stats().evictions, 0);

    // The update stream tells the same story: one `new`, deltas summing to the totals.
    let is_t = |u: &FlowUpdate| {
        u.record.protocol == Protocol::Tcp && u.record.src.port == Some(tcp4_client.port())
    };
    let mut seen = Vec::new();
    while let Ok(u) = updates.try_recv() {
        seen.push(u);
    }
    let t_updates: Vec<&FlowUpdate> = seen.iter().filter(|u| is_t(u)).collect();
    assert_eq!(
        t_updates.iter().filter(|u| u.new).count(),
        1,
        "{t_updates:#?}"
    );
    let sum = t_updates.iter().fold((0, 0), |acc, u| {
        (
            acc.0 + u.delta_packets.sent,
            acc.1 + u.delta_packets.received,
        )
    });
    assert_eq!(sum, (p.sent, p.received));

    let last = dp.shutdown().await.unwrap();
    assert!(last.len() >= flows.len());
    let mut ended = 0;
    while let Ok(u) = updates.try_recv() {
        if is_t(&u) {
            assert!(u.ended);
            ended += 1;
        }
    }
    assert_eq!(ended, 1, "shutdown must end the flow exactly once");
    for dev in ["dpAa0", "dpAb0"] {
        assert_eq!(
            attachments(dev).unwrap(),
            "",
            "{dev}: left behind after shutdown"
        );
    }
}

/// The egress same-node skip caches positive answers per ingress interface: an address
/// userspace removes from the local endpoints must stop being skipped at once (the cache's
/// generation), although the cache held it a moment before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_local_endpoint_is_counted_again_at_egress() {
    if !require_root("removed_local_endpoint_is_counted_again_at_egress") {
        return;
    }
    let br = Bridge::new(
        "dpG-br",
        "10.77.0.1/24".parse().unwrap(),
        "fd77::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpG-a", "dpGa0", &br, v4("10.77.0.2"), v6("fd77::2")).unwrap();
    let b = Pod::on_bridge("dpG-b", "dpGb0", &br, v4("10.77.0.3"), v6("fd77::3")).unwrap();
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    let cfg = DatapathConfig {
        learn_local_endpoints: false,
        ..config("dpG?0")
    };
    let dp = Datapath::start(cfg).await.unwrap();
    dp.set_local_endpoints(&[a4, b4]).unwrap();

    // A flow that lives across the changes below: the programs' per-CPU front entries of
    // the flow map remember which of its endpoints were local when they were filled.
    let long_dst = SocketAddr::new(b4, 7404);
    let long_srv = b.run(move || UdpSocket::bind(long_dst).unwrap());
    let long_cli = a.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    long_srv
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // One way, a to b: the packet before each change is a's, so what the programs
    // remember of a's locality is what the first packet after the change meets.
    let long_send = |n: usize| {
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            long_cli.send_to(&[5u8; 50], long_dst).unwrap();
            long_srv.recv_from(&mut buf).unwrap();
        }
    };

    // Both local: a's packets counted once (at a's interface); the second flow's packets
    // find a's address in the cache.
    udp_echo(&a, &b, SocketAddr::new(b4, 7401), 3, 50);
    udp_echo(&a, &b, SocketAddr::new(b4, 7402), 3, 50);
    long_send(3);
    // a is no longer local: its packets to b are counted at b's interface too.
    dp.set_local_endpoints(&[b4]).unwrap();
    udp_echo(&a, &b, SocketAddr::new(b4, 7403), 3, 50);
    long_send(3);
    // a is local again: counted once again.
    dp.set_local_endpoints(&[a4, b4]).unwrap();
    long_send(3);

    dp.sweep_now().unwrap();
    let flows = dp.snapshot();
    let once = Directional {
        sent: 3,
        received: 3,
    };
    assert_eq!(
        the_flow(&flows, Protocol::Udp, a4, b4, Some(7401)).packets,
        Some(once)
    );
    assert_eq!(
        the_flow(&flows, Protocol::Udp, a4, b4, Some(7402)).packets,
        Some(once)
    );
    assert_eq!(
        the_flow(&flows, Protocol::Udp, a4, b4, Some(7403)).packets,
        Some(Directional {
            sent: 6,
            received: 3
        }),
        "a removed from the local endpoints: its packets are counted at both interfaces"
    );
    assert_eq!(
        the_flow(&flows, Protocol::Udp, a4, b4, Some(7404)).packets,
        Some(Directional {
            sent: 3 + 6 + 3,
            received: 0
        }),
        "a flow alive across the changes follows them: a's 3 middle datagrams counted twice"
    );
    dp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_pods_short_flows_blackhole_and_new_interfaces() {
    if !require_root("routed_pods_short_flows_blackhole_and_new_interfaces") {
        return;
    }
    let a = Pod::routed("dpB-a", "dpBa0", v4("10.72.0.2"), v6("fd72::2")).unwrap();
    let _hole = Route::add(&["blackhole", "10.72.9.9/32"]).unwrap();
    let dp = Datapath::start(config("dpB?0")).await.unwrap();
    // A pod appearing after the start is followed through netlink.
    let b = Pod::routed("dpB-b", "dpBb0", v4("10.72.0.3"), v6("fd72::3")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dp.attached_interfaces().iter().any(|i| i.name == "dpBb0") {
        assert!(
            Instant::now() < deadline,
            "new interface dpBb0 never attached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));

    // A flow much shorter than the sweep interval (an hour) shows up from its ring-buffer
    // event alone, without any sweep.
    let client = udp_echo(&a, &b, SocketAddr::new(b4, 7102), 1, 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flows = dp.snapshot();
        if let Some(f) = flows_of(&flows, Protocol::Udp, a4, b4, Some(7102)).first() {
            assert_eq!(f.src.port, Some(client.port()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "short flow not reported without a sweep: {flows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (tcp_client, ci, si) = tcp_exchange(&b, &a, SocketAddr::new(a4, 7101), 2_000, 2_000);
    let hole = a.run(|| {
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 72, 9, 9)), 80);
        TcpStream::connect_timeout(&dst, Duration::from_millis(1500)).map(|_| ())
    });
    assert!(hole.is_err());

    dp.sweep_now().unwrap();
    let flows = dp.snapshot();
    let u = the_flow(&flows, Protocol::Udp, a4, b4, Some(7102));
    assert_eq!(
        u.packets,
        Some(Directional {
            sent: 1,
            received: 1
        })
    );
    assert_eq!(
        u.bytes,
        Some(Directional {
            sent: 48,
            received: 48
        })
    );
    let t = the_flow(&flows, Protocol::Tcp, b4, a4, Some(7101));
    assert_eq!(t.src.port, Some(tcp_client.port()));
    assert_eq!(t.state, Some(FlowState::Closed));
    let p = t.packets.unwrap();
    assert_eq!(
        (p.sent, p.received),
        (u64::from(ci.segs_out), u64::from(si.segs_out) + 1)
    );
    assert_eq!(p.received, u64::from(ci.segs_in));
    let bh = the_flow(
        &flows,
        Protocol::Tcp,
        a4,
        "10.72.9.9".parse().unwrap(),
        Some(80),
    );
    assert_eq!(bh.state, Some(FlowState::Attempted));
    assert_eq!(bh.packets.unwrap().received, 0);
    assert!(bh.packets.unwrap().sent >= 1);
    assert!(dp.kernel_counters().unwrap().get(Counter::SkippedLocal) > 0);

    dp.shutdown().await.unwrap();
    for dev in ["dpBa0", "dpBb0"] {
        assert_eq!(
            attachments(dev).unwrap(),
            "",
            "{dev}: left behind after shutdown"
        );
    }
}

/// Opens `n` UDP flows (one datagram each, distinct source ports) from `client` to `dst`.
fn udp_flows(client: &Pod, dst: SocketAddr, n: usize) -> Vec<u16> {
    client.run(move || {
        let mut ports = Vec::with_capacity(n);
        // Keep every socket open so that no source port is reused.
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(&[9u8; 16], dst).unwrap();
            ports.push(s.local_addr().unwrap().port());
            socks.push(s);
        }
        ports
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_flows_all_reported_and_overflow_counted() {
    if !require_root("thousands_of_flows_all_reported_and_overflow_counted") {
        return;
    }
    const N: usize = 3000;
    let br = Bridge::new(
        "dpC-br",
        "10.73.0.1/24".parse().unwrap(),
        "fd73::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpC-a", "dpCa0", &br, v4("10.73.0.2"), v6("fd73::2")).unwrap();
    let b = Pod::on_bridge("dpC-b", "dpCb0", &br, v4("10.73.0.3"), v6("fd73::3")).unwrap();
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    // A sink that accepts the datagrams without answering (no ICMP errors).
    let _sink = b.run(|| UdpSocket::bind("0.0.0.0:7201").unwrap());
    let dst = SocketAddr::new(b4, 7201);

    for (capacity, overflow) in [(65_536u32, false), (512, true)] {
        let dp = Datapath::start(DatapathConfig {
            flow_capacity: capacity,
            ..config("dpC?0")
        })
        .await
        .unwrap();
        let ports = udp_flows(&a, dst, N);
        // Events may still be in flight: sweep until every one arrived (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while flows_of(&dp.snapshot(), Protocol::Udp, a4, b4, Some(7201)).len() < N
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dp.sweep_now().unwrap();
        let flows = dp.snapshot();
        let mut seen: Vec<u16> = flows_of(&flows, Protocol::Udp, a4, b4, Some(7201))
            .iter()
            .map(|f| {
                // Evicted flows keep only their announcement (no counts): that loss is what
                // the eviction counter reports.
                if !overflow {
                    assert_eq!(
                        f.packets,
                        Some(Directional {
                            sent: 1,
                            received: 0
                        }),
                        "{f:?}"
                    );
                }
                assert_eq!(f.state, Some(FlowState::Attempted));
                f.src.port.unwrap_or(0)
            })
            .collect();
        seen.sort_unstable();
        let mut expected = ports.clone();
        expected.sort_unstable();
        assert_eq!(expected.len(), N);
        // Every flow reported, exactly once (ring-buffer events announce even the evicted).
        assert_eq!(seen, expected, "capacity {capacity}: recall must be 100 %");
        let counters = dp.kernel_counters().unwrap();
        assert_eq!(counters.get(Counter::RingbufFull), 0);
        let evictions = dp.stats().evictions;
        if overflow {
            assert!(
                evictions > 0,
                "a {capacity}-entry map holding {N} flows must count evictions"
            );
        } else {
            assert_eq!(evictions, 0);
            assert_eq!(counters.get(Counter::MapInsertFailed), 0);
        }
        dp.shutdown().await.unwrap();
        assert_eq!(attachments("dpCa0").unwrap(), "");
    }
}

/// Many multi-packet flows between the same two pods, interleaved, on the per-CPU front
/// entries of the flow map (`FLOW_CACHE`: 2048 IPv4 entries per CPU in sets of two, so
/// about a tenth of 1000 flows find their set full; 256 IPv6 entries, 128 sets, each
/// shared by about eight flows; a flow takes an entry of its set over when the entry's
/// flow has been idle for 1 s, flushing its pending counts, and otherwise counts in the
/// flow map directly): every flow's packets and bytes are exact after a sweep (fails
/// without the flush at a takeover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_flows_sharing_the_per_cpu_entries_are_counted_exactly() {
    if !require_root("interleaved_flows_sharing_the_per_cpu_entries_are_counted_exactly") {
        return;
    }
    interleaved_flows("dpF", 76, false).await;
}

/// As [`interleaved_flows_sharing_the_per_cpu_entries_are_counted_exactly`], over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_ipv6_flows_sharing_the_per_cpu_entries_are_counted_exactly() {
    if !require_root("interleaved_ipv6_flows_sharing_the_per_cpu_entries_are_counted_exactly") {
        return;
    }
    interleaved_flows("dpJ", 81, true).await;
}

/// The interleaved-flows test on pods `<tag>-a` and `<tag>-b` of subnets `10.<net>.0.0/24`
/// and `fd<net>::/64`, over IPv6 when `ipv6`.
async fn interleaved_flows(tag: &str, net: u8, ipv6: bool) {
    const FLOWS: usize = 1000;
    const ROUNDS: u64 = 6;
    const PAYLOAD: usize = 32;
    let br = Bridge::new(
        &format!("{tag}-br"),
        format!("10.{net}.0.1/24").parse().unwrap(),
        format!("fd{net}::1/64").parse().unwrap(),
    )
    .unwrap();
    let pod = |name: &str, host: u8| {
        Pod::on_bridge(
            &format!("{tag}-{name}"),
            &format!("{tag}{name}0"),
            &br,
            v4(&format!("10.{net}.0.{host}")),
            v6(&format!("fd{net}::{host}")),
        )
        .unwrap()
    };
    let (a, b) = (pod("a", 2), pod("b", 3));
    let (src, dst_ip, any, ip_hdr) = if ipv6 {
        (IpAddr::V6(a.v6), IpAddr::V6(b.v6), "[::]:0", 40)
    } else {
        (IpAddr::V4(a.v4), IpAddr::V4(b.v4), "0.0.0.0:0", 20)
    };
    // A sink that accepts the datagrams without answering (no ICMP errors).
    let sink_addr = if ipv6 { "[::]:7301" } else { "0.0.0.0:7301" };
    let _sink = b.run(move || UdpSocket::bind(sink_addr).unwrap());
    let dst = SocketAddr::new(dst_ip, 7301);
    let dp = Datapath::start(config(&format!("{tag}?0"))).await.unwrap();
    let ports = a.run(move || {
        let socks: Vec<UdpSocket> = (0..FLOWS).map(|_| UdpSocket::bind(any).unwrap()).collect();
        // Per round: the order of the flows, and whether the entries' flows then go idle
        // past the takeover time (1 s). An entry is filled by one of its set's flows in some
        // round (1), which then adds to it (2); after a pause, another flow of a full set
        // comes first and takes it over, flushing the pending counts (3); the same again
        // the other way (4, 5). The other flows of a full set count in the flow map
        // directly.
        const REVERSED: [bool; ROUNDS as usize] = [false, false, false, true, true, false];
        const PAUSE_AFTER: [bool; ROUNDS as usize] = [true, false, true, false, true, false];
        for round in 0..ROUNDS as usize {
            let order: Vec<&UdpSocket> = if REVERSED[round] {
                socks.iter().rev().collect()
            } else {
                socks.iter().collect()
            };
            for s in order {
                s.send_to(&[round as u8; PAYLOAD], dst).unwrap();
            }
            if PAUSE_AFTER[round] {
                std::thread::sleep(Duration::from_millis(1100));
            }
        }
        socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect::<Vec<u16>>()
    });
    dp.sweep_now().unwrap();
    let flows = dp.snapshot();
    let found = flows_of(&flows, Protocol::Udp, src, dst_ip, Some(7301));
    assert_eq!(found.len(), FLOWS, "{found:#?}");
    for port in ports {
        let f = found
            .iter()
            .find(|f| f.src.port == Some(port))
            .unwrap_or_else(|| panic!("no flow from port {port}"));
        assert_eq!(
            f.packets,
            Some(Directional {
                sent: ROUNDS,
                received: 0
            }),
            "{f:?}"
        );
        assert_eq!(
            f.bytes,
            Some(Directional {
                sent: ROUNDS * (ip_hdr + 8 + PAYLOAD as u64),
                received: 0
            }),
            "{f:?}"
        );
    }
    dp.shutdown().await.unwrap();
}

/// The flow of `N` UDP datagrams of `SIZE` bytes each way, exactly, as `dp` reports it.
fn assert_echo_flow(dp: &Datapath, which: &str, client: SocketAddr, server: SocketAddr) {
    dp.sweep_now().unwrap();
    let flows = dp.snapshot();
    assert!(!flows.is_empty(), "the {which} datapath saw no flow");
    let f = the_flow(
        &flows,
        Protocol::Udp,
        client.ip(),
        server.ip(),
        Some(server.port()),
    );
    assert_eq!(f.src.port, Some(client.port()), "{which}");
    let (n, bytes) = (ECHO_N as u64, (ECHO_N * (20 + 8 + ECHO_SIZE)) as u64);
    assert_eq!(
        (f.packets, f.bytes),
        (
            Some(Directional {
                sent: n,
                received: n
            }),
            Some(Directional {
                sent: bytes,
                received: bytes
            })
        ),
        "{which} datapath: {f:?}"
    );
}

const ECHO_N: usize = 4;
const ECHO_SIZE: usize = 100;

/// How the programs share a tcx hook with other programs:
/// - a CNI's program that ends the chain (`TCX_PASS`, attached before the agent starts) does
///   not hide packets from ours: ours are put first;
/// - ours hand every packet on ("next"): a second datapath on the same interfaces (as during
///   a DaemonSet rolling update with surge) sees the flow as exactly as the first.
///
/// Appending ours after existing programs, or returning `TC_ACT_PIPE` (which ends a tcx
/// chain), each makes a datapath here see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_share_the_hooks_with_other_programs() {
    if !require_root("programs_share_the_hooks_with_other_programs") {
        return;
    }
    let br = Bridge::new(
        "dpH-br",
        "10.79.0.1/24".parse().unwrap(),
        "fd79::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpH-a", "dpHa0", &br, v4("10.79.0.2"), v6("fd79::2")).unwrap();
    let b = Pod::on_bridge("dpH-b", "dpHb0", &br, v4("10.79.0.3"), v6("fd79::3")).unwrap();
    let _cni =
        [&a, &b].map(|p| VerdictProgram::attach(p.host_ifindex().unwrap(), TCX_PASS).unwrap());
    let first = Datapath::start(config("dpH?0")).await.unwrap();
    let second = Datapath::start(config("dpH?0")).await.unwrap();
    let server = SocketAddr::new(IpAddr::V4(b.v4), 7801);
    let client = udp_echo(&a, &b, server, ECHO_N, ECHO_SIZE);
    let client = SocketAddr::new(IpAddr::V4(a.v4), client.port());
    assert_echo_flow(&first, "first", client, server);
    assert_echo_flow(&second, "second", client, server);
    second.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}

/// The classic attachment (`clsact`, kernels before 6.6: most managed clusters' nodes), forced
/// on this kernel: exact counts with another tool's filter that ends the classification
/// already attached (ours get an automatic priority, which the kernel puts first); after
/// shutdown the other tool's qdisc and filters are still there, a qdisc the datapath added is
/// gone, unless another tool has put a filter on it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clsact_attachment_counts_exactly_and_leaves_others_filters() {
    if !require_root("clsact_attachment_counts_exactly_and_leaves_others_filters") {
        return;
    }
    let br = Bridge::new(
        "dpI-br",
        "10.80.0.1/24".parse().unwrap(),
        "fd80::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpI-a", "dpIa0", &br, v4("10.80.0.2"), v6("fd80::2")).unwrap();
    let b = Pod::on_bridge("dpI-b", "dpIb0", &br, v4("10.80.0.3"), v6("fd80::3")).unwrap();
    let _c = Pod::on_bridge("dpI-c", "dpIc0", &br, v4("10.80.0.4"), v6("fd80::4")).unwrap();
    let tc = |args: &[&str]| {
        let out = netpol_observe_e2e::netns::run("tc", args).unwrap();
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // Another tool's filter: match everything, end the classification there.
    let other_filter = |dev: &str, hook: &str| {
        tc(&[
            "filter", "add", "dev", dev, hook, "u32", "match", "u32", "0", "0", "classid", "1:1",
        ])
    };
    // Its qdisc and filters on pod a's interface.
    tc(&["qdisc", "add", "dev", "dpIa0", "clsact"]);
    other_filter("dpIa0", "ingress");
    other_filter("dpIa0", "egress");
    let cfg = DatapathConfig {
        attach_mode: Some(AttachMode::Clsact),
        ..config("dpI?0")
    };
    let dp = Datapath::start(cfg).await.unwrap();
    let modes: Vec<_> = dp
        .attached_interfaces()
        .into_iter()
        .map(|i| i.mode)
        .collect();
    assert_eq!(modes, [AttachMode::Clsact; 3]);
    // Its filter, added to the qdisc the datapath added on pod c's interface.
    other_filter("dpIc0", "egress");
    let server = SocketAddr::new(IpAddr::V4(b.v4), 7802);
    let client = udp_echo(&a, &b, server, ECHO_N, ECHO_SIZE);
    let client = SocketAddr::new(IpAddr::V4(a.v4), client.port());
    assert_echo_flow(&dp, "clsact", client, server);
    dp.shutdown().await.unwrap();

    // (interface, clsact qdisc left, other tool's filter left per hook)
    for (dev, qdisc, others) in [
        ("dpIa0", true, [true, true]),
        ("dpIb0", false, [false, false]),
        ("dpIc0", true, [false, true]),
    ] {
        for (hook, other) in ["ingress", "egress"].into_iter().zip(others) {
            let filters = if qdisc {
                tc(&["filter", "show", "dev", dev, hook])
            } else {
                String::new()
            };
            assert!(
                !filters.contains("bpf"),
                "{dev} {hook}: left behind: {filters}"
            );
            assert_eq!(filters.contains("u32"), other, "{dev} {hook}: {filters}");
        }
        let qdiscs = tc(&["qdisc", "show", "dev", dev]);
        assert_eq!(qdiscs.contains("clsact"), qdisc, "{dev}: {qdiscs}");
    }
}

#[test]
/// SIGTERM (Kubernetes), SIGHUP (a closed terminal) and SIGQUIT all end the agent cleanly: the
/// final flows printed, nothing left attached.
fn agent_cli_prints_jsonl_on_sigterm_sighup_sigquit_and_detaches() {
    if !require_root("agent_cli_prints_jsonl_on_sigterm_sighup_sigquit_and_detaches") {
        return;
    }
    let br = Bridge::new(
        "dpD-br",
        "10.74.0.1/24".parse().unwrap(),
        "fd74::1/64".parse().unwrap(),
    )
    .unwrap();
    let a = Pod::on_bridge("dpD-a", "dpDa0", &br, v4("10.74.0.2"), v6("fd74::2")).unwrap();
    let b = Pod::on_bridge("dpD-b", "dpDb0", &br, v4("10.74.0.3"), v6("fd74::3")).unwrap();
    let bin = netpol_observe_e2e::bin();
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p netpol-observe)",
        bin.display()
    );
    for (signal, port) in [
        (libc::SIGTERM, 7401),
        (libc::SIGHUP, 7402),
        (libc::SIGQUIT, 7403),
    ] {
        let child = std::process::Command::new(&bin)
            .args([
                "agent",
                "--interfaces",
                "dpD?0",
                "--output",
                "jsonl",
                "--node-name",
                "n1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill the agent even if an assertion below fails.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while attachments("dpDb0").unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the agent never attached");
            std::thread::sleep(Duration::from_millis(20));
        }
        let client = udp_echo(&a, &b, SocketAddr::new(IpAddr::V4(b.v4), port), 2, 30);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.0.id() as libc::pid_t, signal) };
        let mut out = String::new();
        child
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.0.wait().unwrap().success());
        let records: Vec<FlowRecord> = netpol_observe_core::flow::jsonl::read_lines(
            std::path::Path::new("stdout"),
            out.as_bytes(),
        )
        .into_iter()
        .map(|(_, r)| r.unwrap())
        .collect();
        let f = the_flow(
            &records,
            Protocol::Udp,
            IpAddr::V4(a.v4),
            IpAddr::V4(b.v4),
            Some(port),
        );
        assert_eq!(f.src.port, Some(client.port()));
        assert_eq!(
            f.packets,
            Some(Directional {
                sent: 2,
                received: 2
            })
        );
        assert_eq!(
            f.bytes,
            Some(Directional {
                sent: 116,
                received: 116
            })
        );
        assert_eq!(f.node.as_deref(), Some("n1"));
        for dev in ["dpDa0", "dpDb0"] {
            assert_eq!(
                attachments(dev).unwrap(),
                "",
                "{dev}: left behind by the agent"
            );
        }
    }
}

/// clsact filters outlive a killed agent (tcx links do not): the next agent removes them
/// before attaching (one pair of filters per hook, never two), and at its exit nothing is
/// left, the qdisc the killed agent added included.
#[test]
fn clsact_filters_of_a_killed_agent_are_removed_by_the_next() {
    if !require_root("clsact_filters_of_a_killed_agent_are_removed_by_the_next") {
        return;
    }
    let br = Bridge::new(
        "dpK-br",
        "10.81.0.1/24".parse().unwrap(),
        "fd81::1/64".parse().unwrap(),
    )
    .unwrap();
    let _a = Pod::on_bridge("dpK-a", "dpKa0", &br, v4("10.81.0.2"), v6("fd81::2")).unwrap();
    let start = || {
        std::process::Command::new(netpol_observe_e2e::bin())
            .args([
                "agent",
                "--interfaces",
                "dpK?0",
                "--attach-mode",
                "clsact",
                "--output",
                "none",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let tc = |args: &[&str]| {
        let out = netpol_observe_e2e::netns::run("tc", args).unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let bpf_filters = |hook: &str| {
        tc(&["filter", "show", "dev", "dpKa0", hook])
            .lines()
            .filter(|l| l.contains("bpf") && l.contains("handle"))
            .count()
    };
    let wait_filters = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while bpf_filters("ingress") != n || bpf_filters("egress") != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} bpf filter(s) per hook: {}{}",
                tc(&["filter", "show", "dev", "dpKa0", "ingress"]),
                tc(&["filter", "show", "dev", "dpKa0", "egress"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut killed = start();
    wait_filters(1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    // Left behind by the SIGKILL.
    assert_eq!((bpf_filters("ingress"), bpf_filters("egress")), (1, 1));
    let mut next = start();
    wait_filters(1);
    // Still one per hook a moment later: the stale pair was replaced, not stacked.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((bpf_filters("ingress"), bpf_filters("egress")), (1, 1));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(next.id() as libc::pid_t, libc::SIGTERM) };
    assert!(next.wait().unwrap().success());
    assert!(
        !tc(&["qdisc", "show", "dev", "dpKa0"]).contains("clsact"),
        "the clsact qdisc is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_datapath_detaches_and_missing_interface_is_an_error() {
    if !require_root("dropping_the_datapath_detaches_and_missing_interface_is_an_error") {
        return;
    }
    let err = Datapath::start(DatapathConfig::with_interfaces(["dpE-nosuch"]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "interface dpE-nosuch does not exist");

    let _a = Pod::routed("dpE-a", "dpEa0", v4("10.75.0.2"), v6("fd75::2")).unwrap();
    let dp = Datapath::start(config("dpEa0")).await.unwrap();
    assert!(!attachments("dpEa0").unwrap().is_empty());
    drop(dp);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !attachments("dpEa0").unwrap().is_empty() {
        assert!(Instant::now() < deadline, "still attached after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A simulated node for the drop scope test: a network namespace (removed on drop) with `lo`
/// up and an nftables input rule dropping UDP to [`SCOPE_PORT`] (kernel reason
/// `NETFILTER_DROP`, `skb->dev` = this namespace's `lo`).
struct ScopeNode {
    netns: String,
}

const SCOPE_PORT: u16 = 40101;

impl ScopeNode {
    fn new(netns: &str) -> ScopeNode {
        let _ = netpol_observe_e2e::netns::ip(&["netns", "del", netns]);
        netpol_observe_e2e::netns::ip(&["netns", "add", netns]).unwrap();
        let node = ScopeNode {
            netns: netns.to_owned(),
        };
        netpol_observe_e2e::netns::ip(&["-n", netns, "link", "set", "lo", "up"]).unwrap();
        let rules = format!(
            "table inet npo_scope {{\n chain input {{\n  type filter hook input priority 0; \
             policy accept;\n  udp dport {SCOPE_PORT} drop\n }}\n}}\n"
        );
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft in {netns}: {rules}");
        node
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            netpol_observe_e2e::netns::enter(&path).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// Sends `n` UDP datagrams from `127.0.0.1:src_port` to the dropped port; the key of the
    /// drops.
    fn send_dropped(&self, src_port: u16, n: usize) -> DropFlow {
        self.run(move || {
            let s = UdpSocket::bind(("127.0.0.1", src_port)).unwrap();
            for _ in 0..n {
                s.send_to(&[5u8; 64], ("127.0.0.1", SCOPE_PORT)).unwrap();
            }
        });
        (
            SocketAddr::from(([127, 0, 0, 1], src_port)),
            SocketAddr::from(([127, 0, 0, 1], SCOPE_PORT)),
        )
    }
}

impl Drop for ScopeNode {
    fn drop(&mut self) {
        let _ = netpol_observe_e2e::netns::ip(&["netns", "del", &self.netns]);
    }
}

/// (sender, destination) of UDP drops.
type DropFlow = (SocketAddr, SocketAddr);

/// A drop tracer and the `NETFILTER_DROP` UDP packets it counted per flow so far.
struct Tally {
    tracer: DropTracer,
    counts: std::collections::HashMap<DropFlow, u64>,
}

impl Tally {
    fn new(tracer: DropTracer) -> Tally {
        Tally {
            tracer,
            counts: std::collections::HashMap::new(),
        }
    }

    fn read(&mut self) {
        for d in self.tracer.read().unwrap() {
            if d.protocol == Protocol::Udp && d.reason == "NETFILTER_DROP" {
                *self
                    .counts
                    .entry((
                        SocketAddr::new(d.src, d.src_port),
                        SocketAddr::new(d.dst, d.dst_port),
                    ))
                    .or_default() += d.packets;
            }
        }
    }

    fn of(&self, flow: DropFlow) -> u64 {
        self.counts.get(&flow).copied().unwrap_or(0)
    }
}

/// Reads every tally until each `(tally, flow, packets)` has counted at least `packets`.
fn wait_drops(tallies: &mut [&mut Tally], want: &[(usize, DropFlow, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for t in tallies.iter_mut() {
            t.read();
        }
        if want.iter().all(|(i, f, n)| tallies[*i].of(*f) >= *n) {
            return;
        }
        let seen: Vec<_> = want
            .iter()
            .map(|(i, f, n)| (i, f, tallies[*i].of(*f), n))
            .collect();
        assert!(
            Instant::now() < deadline,
            "drops not counted in time: (tracer, flow, counted, expected) {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two simulated nodes on one kernel (network namespaces A and B, each dropping UDP to the same
/// address and port with nftables): a tracer with scope `netns` started inside A counts A's
/// drops exactly and none of B's, one started inside B the reverse, one started in the root
/// namespace (where nothing drops) none; scope `kernel` counts both nodes' drops exactly.
#[test]
fn drop_scope_netns_counts_only_its_own_namespace() {
    if !require_root("drop_scope_netns_counts_only_its_own_namespace") {
        return;
    }
    let a = ScopeNode::new("dpN-node-a");
    let b = ScopeNode::new("dpN-node-b");
    let reasons = ["NETFILTER_DROP".to_owned()];
    let start = |scope| {
        let reasons = reasons.clone();
        move || DropTracer::start(&reasons, true, scope).unwrap()
    };
    let mut kernel = Tally::new(start(DropScope::Kernel)());
    let mut in_a = Tally::new(a.run(start(DropScope::Netns)));
    let mut in_b = Tally::new(b.run(start(DropScope::Netns)));
    let mut in_root = Tally::new(start(DropScope::Netns)());

    // B's drops first: by the time A's are all counted, B's are long past in every tracer.
    let from_b = b.send_dropped(40112, 7);
    wait_drops(
        &mut [&mut kernel, &mut in_b],
        &[(0, from_b, 7), (1, from_b, 7)],
    );
    let from_a = a.send_dropped(40111, 5);
    wait_drops(
        &mut [&mut kernel, &mut in_a],
        &[(0, from_a, 5), (1, from_a, 5)],
    );
    for t in [&mut kernel, &mut in_a, &mut in_b, &mut in_root] {
        t.read();
    }
    let counts = |t: &Tally| (t.of(from_a), t.of(from_b));
    assert_eq!(counts(&kernel), (5, 7), "kernel scope: both nodes' drops");
    assert_eq!(counts(&in_a), (5, 0), "netns scope in A: A's drops only");
    assert_eq!(counts(&in_b), (0, 7), "netns scope in B: B's drops only");
    assert_eq!(
        counts(&in_root),
        (0, 0),
        "netns scope in the root namespace"
    );
}
