//! Unit tests of the DNS answer parser, the per-pod name cache and the rotation check.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, TXT},
    },
};

use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A response to `q` (type `qt`) with `answers`.
fn response(q: &str, qt: RecordType, answers: Vec<Record>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_response_code(ResponseCode::NoError)
        .add_query(Query::query(name(q), qt));
    for a in answers {
        m.add_answer(a);
    }
    m.to_vec().unwrap()
}

fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_records_name_their_addresses() {
    let msg = response(
        "API.Example.com.",
        RecordType::A,
        vec![
            a("api.example.com.", 30, [1, 2, 3, 4]),
            a("api.example.com.", 60, [1, 2, 3, 5]),
        ],
    );
    let r = parse_answer(&msg, false, msg.len() as u32)
        .unwrap()
        .unwrap();
    assert_eq!(r.question, "api.example.com");
    assert_eq!(
        r.addresses,
        vec![
            (ip("1.2.3.4"), vec!["api.example.com".to_owned()], 30),
            (ip("1.2.3.5"), vec!["api.example.com".to_owned()], 60),
        ]
    );
}

#[test]
fn cname_chains_are_followed_with_every_name_and_the_smallest_ttl() {
    let msg = response(
        "www.shop.example.",
        RecordType::A,
        vec![
            cname("www.shop.example.", 20, "shop.cdn.example."),
            cname("shop.cdn.example.", 300, "edge-7.cdn.example."),
            a("edge-7.cdn.example.", 60, [9, 9, 9, 9]),
            // Not on the chain: ignored.
            a("other.example.", 60, [8, 8, 8, 8]),
        ],
    );
    let r = parse_answer(&msg, false, msg.len() as u32)
        .unwrap()
        .unwrap();
    assert_eq!(
        r.addresses,
        vec![(
            ip("9.9.9.9"),
            vec![
                "edge-7.cdn.example".to_owned(),
                "shop.cdn.example".to_owned(),
                "www.shop.example".to_owned()
            ],
            20
        )]
    );
}

#[test]
fn aaaa_over_tcp_with_its_length_prefix() {
    let msg = response(
        "v6.example.",
        RecordType::AAAA,
        vec![Record::from_rdata(
            name("v6.example."),
            10,
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::1").unwrap())),
        )],
    );
    let mut tcp = (msg.len() as u16).to_be_bytes().to_vec();
    tcp.extend_from_slice(&msg);
    let r = parse_answer(&tcp, true, tcp.len() as u32).unwrap().unwrap();
    assert_eq!(
        r.addresses,
        vec![(ip("2001:db8::1"), vec!["v6.example".to_owned()], 10)]
    );
}

#[test]
fn tcp_length_and_message_in_two_segments() {
    let msg = response(
        "two.example.",
        RecordType::A,
        vec![a("two.example.", 9, [5, 6, 7, 8])],
    );
    let len = (msg.len() as u16).to_be_bytes();
    assert_eq!(parse_answer(&len, true, 2).unwrap(), None);
    let r = parse_answer(&msg, true, msg.len() as u32).unwrap().unwrap();
    assert_eq!(
        r.addresses,
        vec![(ip("5.6.7.8"), vec!["two.example".to_owned()], 9)]
    );
}

#[test]
fn queries_errors_and_answers_without_addresses_are_not_resolutions() {
    let mut m = Message::new();
    m.set_message_type(MessageType::Query)
        .add_query(Query::query(name("a.example."), RecordType::A));
    let q = m.to_vec().unwrap();
    assert_eq!(parse_answer(&q, false, q.len() as u32).unwrap(), None);
    m.set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::NXDomain);
    let nx = m.to_vec().unwrap();
    assert_eq!(parse_answer(&nx, false, nx.len() as u32).unwrap(), None);
    let txt = response(
        "t.example.",
        RecordType::TXT,
        vec![Record::from_rdata(
            name("t.example."),
            5,
            RData::TXT(TXT::new(vec!["x".into()])),
        )],
    );
    assert_eq!(parse_answer(&txt, false, txt.len() as u32).unwrap(), None);
}

#[test]
fn a_capture_cut_keeps_the_records_before_the_cut() {
    let answers = (0..40)
        .map(|i| a("many.example.", 30, [10, 0, 0, i]))
        .collect();
    let msg = response("many.example.", RecordType::A, answers);
    assert!(msg.len() > 512);
    let cut = &msg[..512];
    let r = parse_answer(cut, false, msg.len() as u32).unwrap().unwrap();
    assert!(!r.addresses.is_empty() && r.addresses.len() < 40);
    assert_eq!(r.addresses[0].0, ip("10.0.0.0"));
    // The same bytes claiming to be the whole payload are malformed.
    let e = parse_answer(cut, false, 512).unwrap_err();
    assert!(e.to_string().contains("answer record"), "{e}");
}

#[test]
fn malformed_packets_are_errors_never_panics() {
    assert!(matches!(
        parse_answer(&[], false, 0),
        Err(DnsParseError::Short { len: 0 })
    ));
    assert!(matches!(
        parse_answer(&[0], true, 1),
        Err(DnsParseError::Short { len: 1 })
    ));
    assert!(matches!(
        parse_answer(&[0; 11], false, 11),
        Err(DnsParseError::Short { len: 11 })
    ));
    // A response header claiming a question that is not there.
    let mut bad = vec![0, 7, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    bad.extend_from_slice(&[0xc0, 0x0c]); // a compression pointer to itself
    let e = parse_answer(&bad, false, bad.len() as u32).unwrap_err();
    assert!(e.to_string().contains("question"), "{e}");
    // Every prefix and every single-byte corruption of a real answer: no panic.
    let msg = response(
        "www.shop.example.",
        RecordType::A,
        vec![
            cname("www.shop.example.", 20, "shop.cdn.example."),
            a("shop.cdn.example.", 60, [9, 9, 9, 9]),
        ],
    );
    for n in 0..=msg.len() {
        let _ = parse_answer(&msg[..n], false, n as u32);
        let _ = parse_answer(&msg[..n], false, msg.len() as u32);
        let _ = parse_answer(&msg[..n], true, n as u32);
    }
    let mut x: u32 = 12345;
    for i in 0..msg.len() {
        for _ in 0..8 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let mut m = msg.clone();
            m[i] = (x >> 16) as u8;
            let _ = parse_answer(&m, false, m.len() as u32);
        }
    }
}

#[test]
fn a_cname_loop_ends() {
    let msg = response(
        "a.loop.",
        RecordType::A,
        vec![
            cname("a.loop.", 5, "b.loop."),
            cname("b.loop.", 5, "a.loop."),
            a("b.loop.", 5, [1, 1, 1, 1]),
        ],
    );
    let r = parse_answer(&msg, false, msg.len() as u32)
        .unwrap()
        .unwrap();
    assert_eq!(
        r.addresses,
        vec![(
            ip("1.1.1.1"),
            vec!["a.loop".to_owned(), "b.loop".to_owned()],
            5
        )]
    );
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn names_live_for_ttl_plus_grace_per_client() {
    let t0 = Instant::now();
    let mut c = DnsCache::new(DnsCacheLimits {
        grace: Duration::from_secs(10),
        ..DnsCacheLimits::default()
    });
    let (pod, other) = (ip("10.0.0.2"), ip("10.0.0.3"));
    c.insert(
        pod,
        ip("1.2.3.4"),
        &names(&["b.example", "a.example"]),
        30,
        t0,
    );
    let at = |s| t0 + Duration::from_secs(s);
    assert_eq!(
        c.lookup(pod, ip("1.2.3.4"), at(39)).unwrap().names,
        names(&["a.example", "b.example"])
    );
    // Another pod did not resolve it.
    assert_eq!(c.lookup(other, ip("1.2.3.4"), at(1)), None);
    assert_eq!(c.lookup(pod, ip("1.2.3.4"), at(40)), None);
    // A later answer extends only its name.
    c.insert(pod, ip("1.2.3.4"), &names(&["a.example"]), 60, at(20));
    assert_eq!(
        c.lookup(pod, ip("1.2.3.4"), at(50)).unwrap().names,
        names(&["a.example"])
    );
    c.expire(at(89));
    assert_eq!(c.len(), 1);
    c.expire(at(90));
    assert_eq!(c.len(), 0);
    assert!(!c.knows_client(pod));
    assert_eq!(c.evictions(), 0);
}

#[test]
fn the_cache_is_bounded_per_pod_and_in_total_lru_first() {
    let t0 = Instant::now();
    let mut c = DnsCache::new(DnsCacheLimits {
        grace: Duration::from_secs(10),
        per_pod: 2,
        total: 3,
    });
    let n = names(&["x.example"]);
    let (p1, p2) = (ip("10.0.0.2"), ip("10.0.0.3"));
    c.insert(p1, ip("1.0.0.1"), &n, 60, t0);
    c.insert(p1, ip("1.0.0.2"), &n, 60, t0);
    // Used again: 1.0.0.1 is now the more recent.
    c.insert(p1, ip("1.0.0.1"), &n, 60, t0);
    c.insert(p1, ip("1.0.0.3"), &n, 60, t0);
    assert_eq!(c.evictions(), 1);
    assert!(c.lookup(p1, ip("1.0.0.2"), t0).is_none());
    assert!(c.lookup(p1, ip("1.0.0.1"), t0).is_some());
    c.insert(p2, ip("1.0.0.9"), &n, 60, t0);
    c.insert(p2, ip("1.0.0.8"), &n, 60, t0);
    // Total 3: the least recently used entry of any pod goes (p1's 1.0.0.1).
    assert_eq!(c.len(), 3);
    assert_eq!(c.evictions(), 2);
    assert!(c.lookup(p1, ip("1.0.0.1"), t0).is_none());
    assert!(c.lookup(p1, ip("1.0.0.3"), t0).is_some());
}

fn inventory(annotation: &str) -> Inventory {
    Inventory::from_yaml_str(
        &format!(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
  spec: {{nodeName: node-1, containers: [{{name: c, image: x}}]}}
  status: {{podIP: 10.244.0.2, podIPs: [{{ip: 10.244.0.2}}]}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: db-1, namespace: shop, labels: {{app: db}}}}
  spec: {{nodeName: node-1, containers: [{{name: c, image: x}}]}}
  status: {{podIP: 10.244.0.3, podIPs: [{{ip: 10.244.0.3}}]}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: web-egress
    namespace: shop
    annotations: {{netpol-observe.io/dns-names: '{annotation}'}}
  spec:
    podSelector: {{matchLabels: {{app: web}}}}
    policyTypes: [Egress]
    egress:
    - to: [{{ipBlock: {{cidr: 203.0.113.0/28}}}}, {{ipBlock: {{cidr: 198.51.100.7/32}}}}]
"#
        ),
        "test",
    )
    .unwrap()
}

#[test]
fn a_name_outside_its_ipblocks_is_a_rotation_once() {
    let inv = inventory(
        r#"{"203.0.113.0/28": ["api.example.com"], "198.51.100.7/32": ["api.example.com", "cdn.example.com"]}"#,
    );
    let (mut p, errors) = DnsPolicies::new(&inv);
    assert!(errors.is_empty(), "{errors:?}");
    let (web, db) = (ip("10.244.0.2"), ip("10.244.0.3"));
    let api = names(&["api.example.com"]);
    // Inside either CIDR listing the name: no rotation.
    assert!(p.check(web, ip("203.0.113.9"), &api).is_empty());
    assert!(p.check(web, ip("198.51.100.7"), &api).is_empty());
    // cdn is listed only for 198.51.100.7/32.
    let cdn = names(&["cdn.example.com"]);
    let r = p.check(web, ip("203.0.113.9"), &cdn);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].rotation,
        DnsRotation {
            policy: "shop/web-egress".into(),
            name: "cdn.example.com".into()
        }
    );
    assert_eq!(&*r[0].pod.workload, "web-1");
    assert_eq!(&*r[0].pod.kind, "Pod");
    // Outside: once per address.
    assert_eq!(p.check(web, ip("192.0.2.1"), &api).len(), 1);
    assert!(p.check(web, ip("192.0.2.1"), &api).is_empty());
    assert_eq!(p.check(web, ip("192.0.2.2"), &api).len(), 1);
    // A name no policy lists, a pod no policy selects: nothing.
    assert!(
        p.check(web, ip("192.0.2.3"), &names(&["other.example"]))
            .is_empty()
    );
    assert!(p.check(db, ip("192.0.2.4"), &api).is_empty());
    // A new model keeps what was reported.
    let (mut q, _) = DnsPolicies::new(&inv);
    q.keep_seen(&mut p);
    assert!(q.check(web, ip("192.0.2.1"), &api).is_empty());
}

#[test]
fn a_bad_annotation_is_an_error_naming_the_policy() {
    for (text, want) in [
        ("not json", "not a JSON object"),
        (r#"{"nope": ["a.example"]}"#, "\"nope\" is not a CIDR"),
    ] {
        let (p, errors) = DnsPolicies::new(&inventory(text));
        assert!(p.is_empty());
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.contains("shop/web-egress") && e.contains(want), "{e}");
    }
}

#[test]
fn the_agent_names_flows_and_counts_a_rotation_once_across_models() {
    use crate::{
        agent::{AgentConfig, AgentState, Model},
        attribution::Subnets,
        datapath::DnsAnswer,
    };
    let inv = Arc::new(inventory(r#"{"203.0.113.0/28": ["api.example.com"]}"#));
    let state = AgentState::new(AgentConfig::default());
    let model = || Arc::new(Model::new(Arc::clone(&inv), &Subnets::default(), None).unwrap());
    state.set_model(model());
    let answer = |to: [u8; 4]| {
        let msg = response(
            "api.example.com.",
            RecordType::A,
            vec![a("api.example.com.", 30, to)],
        );
        DnsAnswer {
            client: ip("10.244.0.2"),
            server: ip("10.96.0.10"),
            tcp: false,
            payload_len: msg.len() as u32,
            payload: msg.into(),
        }
    };
    let t0 = Instant::now();
    state.on_dns_at(&answer([203, 0, 113, 4]), t0);
    let inside = state.flow_dns(ip("10.244.0.2"), ip("203.0.113.4")).unwrap();
    assert_eq!(inside.names, names(&["api.example.com"]));
    assert_eq!(inside.rotation, None);
    state.on_dns_at(&answer([192, 0, 2, 1]), t0);
    let outside = state.flow_dns(ip("10.244.0.2"), ip("192.0.2.1")).unwrap();
    assert_eq!(
        outside.rotation,
        Some(DnsRotation {
            policy: "shop/web-egress".into(),
            name: "api.example.com".into()
        })
    );
    // Another pod's flows to the address are not named.
    assert_eq!(state.flow_dns(ip("10.244.0.3"), ip("192.0.2.1")), None);
    // A new model: the same rotation is not counted again.
    state.set_model(model());
    state.on_dns_at(&answer([192, 0, 2, 1]), t0);
    let text = state.metrics().encode_text().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("netpol_observe_dns_rotations_total{"))
        .unwrap();
    assert_eq!(
        line,
        r#"netpol_observe_dns_rotations_total{namespace="shop",kind="Pod",workload="web-1",policy="shop/web-egress"} 1"#
    );
    assert!(
        text.contains("\nnetpol_observe_dns_answers_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\nnetpol_observe_dns_cache_entries 2\n"),
        "{text}"
    );
}
