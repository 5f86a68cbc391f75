//! Property tests: for random multi-namespace clusters and random traffic (pod to pod, through
//! Services, to and from named subnets, private and public addresses), the recommended policies
//! allow every observed flow, deny every unobserved (client, server, port) combination among
//! known workloads, parse back into k8s-openapi types and do not depend on the flow order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use netpol_observe_core::{attribution::Subnets, flow::FlowRecord};
use proptest::prelude::*;
use recommend_support::*;

const PORTS: &[(&str, u16, &str)] = &[
    ("http", 8080, "TCP"),
    ("", 9000, "TCP"),
    ("stats", 5353, "UDP"),
];

#[derive(Debug, Clone)]
struct Spec {
    workloads: Vec<(usize, usize, Vec<usize>, bool)>, // (namespace, replicas, port indices, service)
    flows: Vec<(usize, Target, usize, usize)>,        // (client, target, port choice, pod choice)
    world_threshold: usize,
}

#[derive(Debug, Clone)]
enum Target {
    Workload(usize),
    Service(usize),
    External(u8, u8),
    FromExternal(u8, u8),
}

fn spec() -> impl Strategy<Value = Spec> {
    (2usize..6)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(
                    (
                        0usize..3,
                        1usize..3,
                        prop::collection::vec(0usize..3, 1..3),
                        any::<bool>(),
                    ),
                    n,
                ),
                prop::collection::vec(
                    (
                        0..n,
                        prop_oneof![
                            (0..n).prop_map(Target::Workload),
                            (0..n).prop_map(Target::Service),
                            (0u8..4, 1u8..30).prop_map(|(a, b)| Target::External(a, b)),
                            (0u8..4, 1u8..30).prop_map(|(a, b)| Target::FromExternal(a, b)),
                        ],
                        0usize..3,
                        0usize..2,
                    ),
                    1..25,
                ),
                2usize..20,
            )
        })
        .prop_map(|(workloads, flows, world_threshold)| Spec {
            workloads,
            flows,
            world_threshold,
        })
}

fn external(kind: u8, host: u8) -> String {
    match kind {
        0 => format!("10.0.3.{host}"),      // named subnet `db`
        1 => format!("172.20.0.{host}"),    // private, unnamed
        2 => format!("203.0.{host}.7"),     // public, spread
        _ => format!("2001:db8::{host:x}"), // public IPv6
    }
}

fn build(spec: &Spec) -> Scenario {
    let mut c = Cluster::new();
    c.kube_dns("10.96.0.10");
    let mut pods = Vec::new();
    for (i, (ns, replicas, ports, svc)) in spec.workloads.iter().enumerate() {
        let mut list: Vec<(&str, u16, &str)> = ports.iter().map(|p| PORTS[*p]).collect();
        list.sort();
        list.dedup();
        let name = format!("w{i}");
        let ips = c.deployment(&format!("ns{ns}"), &name, *replicas, &list);
        if *svc {
            let (_, port, proto) = list[0];
            c.service(
                &format!("ns{ns}"),
                &name,
                &format!("10.96.1.{}", i + 1),
                serde_json::json!({"app": name}),
                &[(80, serde_json::json!(port), proto)],
            );
        }
        pods.push((ips, list, *svc));
    }
    let mut s = Scenario::new(c);
    s.subnets = Subnets::new([("db".to_owned(), "10.0.3.0/24".parse().unwrap())]);
    s.config.world_threshold = spec.world_threshold;
    for (minute, (client, target, port, pod)) in spec.flows.iter().enumerate() {
        let m = minute as i64;
        let (cips, _, _) = &pods[*client];
        let src = cips[pod % cips.len()];
        let f: FlowRecord = match target {
            Target::Workload(w) => {
                let (ips, ports, _) = &pods[*w];
                let (_, p, proto) = ports[port % ports.len()];
                flow(
                    proto.parse().unwrap(),
                    src,
                    &ips[pod % ips.len()].to_string(),
                    Some(p),
                    m,
                )
            }
            Target::Service(w) => {
                let (ips, ports, svc) = &pods[*w];
                let (_, p, proto) = ports[0];
                if *svc {
                    flow(
                        proto.parse().unwrap(),
                        src,
                        &format!("10.96.1.{}", w + 1),
                        Some(80),
                        m,
                    )
                } else {
                    flow(proto.parse().unwrap(), src, &ips[0].to_string(), Some(p), m)
                }
            }
            Target::External(k, h) => tcp(src, &external(*k, *h), [443, 5432, 8080][*port], m),
            Target::FromExternal(k, h) => {
                let (ips, ports, _) = &pods[*client];
                let (_, p, proto) = ports[port % ports.len()];
                flow(
                    proto.parse().unwrap(),
                    external(*k, *h).parse().unwrap(),
                    &ips[pod % ips.len()].to_string(),
                    Some(p),
                    m,
                )
            }
        };
        s.flows.push(f);
        if minute % 3 == 0 {
            s.flows.push(udp(src, "10.96.0.10", 53, m));
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn observed_allowed_unobserved_denied(spec in spec()) {
        let mut s = build(&spec);
        let a = s.check().yaml;
        s.flows.reverse();
        let b = s.check().yaml;
        prop_assert_eq!(a, b);
    }
}
