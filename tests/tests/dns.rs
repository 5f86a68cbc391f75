//! DNS names from real DNS answers on a real kernel: pods as network namespaces, a real DNS
//! server (UDP and TCP port 53) in one of them, the datapath's DNS-answer capture and the
//! agent's names on flows and rotation counter.

// Tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use netpol_observe_agent::{
    agent::dns::parse_answer,
    datapath::{Counter, Datapath, DatapathConfig, DnsAnswer},
};
use netpol_observe_e2e::{
    dns::{DnsServer, ZoneEntry, resolve},
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
