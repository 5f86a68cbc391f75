//! The flow path end to end on an `AgentState`: Service legs, the series budget, verdicts kept
//! across a model swap, cached series, flows evicted while active.

use std::{collections::BTreeMap, net::IpAddr};

use super::*;
use std::sync::Arc;

use jiff::Timestamp;

use crate::{
    attribution::Subnets,
    datapath::FlowUpdate,
    flow::{Endpoint, FlowRecord},
    inventory::Inventory,
    metrics::{Direction, Metrics},
};
use crate::{
    flow::{Directional, Protocol, WorkloadRef},
    inventory::{Labels, PodInfo},
};

fn pod(i: usize) -> PodInfo {
    PodInfo {
        namespace: format!("ns{}", i % 10).into(),
        name: format!("w{i}-0").into(),
        uid: format!("uid-{i}").into(),
        labels: [("app", format!("w{i}"))].into(),
        ips: vec![IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1])],
        host_network: false,
        node_name: Some("node-1".into()),
        workload: Arc::new(WorkloadRef {
            kind: "Deployment".to_owned(),
            name: format!("w{i}"),
        }),
        selector_labels: Labels::default(),
        container_ports: Arc::from(Vec::new()),
        created: None,
        deleted: None,
    }
}

/// A same-node connection to a Service leaves a client leg (to the ClusterIP) and a
/// backend leg (after the DNAT, here to the Service's *second* backend): the agent keeps
/// one flow, to the Service, attributed to the backend really reached; later updates of
/// the backend leg are not counted; a direct connection to that backend stays its own flow.
#[test]
fn a_service_connection_is_reported_once_with_the_backend_reached() {
    use crate::inventory::{ServiceInfo, ServicePortInfo, TargetPort};
    let api = |i| {
        let mut p = pod(i);
        p.labels = [("app", "api")].into();
        Arc::make_mut(&mut p.workload).name = "api".to_owned();
        p
    };
    let (web, first, second) = (pod(0), api(10), api(20));
    let cluster_ip: IpAddr = "10.96.0.20".parse().unwrap();
    let inventory = Inventory {
        pods: vec![web.clone(), first, second.clone()],
        services: vec![ServiceInfo {
            namespace: "ns0".to_owned(),
            name: "api".to_owned(),
            cluster_ips: vec![cluster_ip],
            selector: Some([("app", "api")].into()),
            ports: vec![ServicePortInfo {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(9000),
            }],
            service_type: Default::default(),
        }],
        ..Inventory::default()
    };
    let state = AgentState::new(AgentConfig {
        node_name: Some("node-1".to_owned()),
        ..AgentConfig::default()
    });
    let model = Model::new(Arc::new(inventory), &Subnets::default(), None).unwrap();
    state.set_model(Arc::new(model));
    let update = |src: (IpAddr, u16), dst: (IpAddr, u16), new: bool, sent: u64| {
        let mut r = FlowRecord::new(Protocol::Tcp, src.0, dst.0, Some(dst.1));
        r.src = Endpoint::bare(src.0, Some(src.1));
        r.first_seen = Some(Timestamp::now());
        let d = Directional { sent, received: 4 };
        r.packets = Some(d);
        FlowUpdate {
            record: r,
            new,
            delta_packets: d,
            delta_bytes: d,
            ended: false,
            opened: true,
        }
    };
    let (web_ip, backend_ip) = (web.ips[0], second.ips[0]);
    state.on_update(&update((web_ip, 40000), (cluster_ip, 80), true, 6));
    state.on_update(&update((web_ip, 40000), (backend_ip, 9000), true, 0));
    state.on_update(&update((web_ip, 40000), (backend_ip, 9000), false, 0));
    state.on_update(&update((web_ip, 40001), (backend_ip, 9000), true, 6));

    let flows = state.flows(&FlowQuery::default());
    let seen: Vec<(u16, IpAddr, Option<&str>, Option<&str>)> = flows
        .iter()
        .map(|f| {
            (
                f.flow.src.port.unwrap(),
                f.flow.dst.ip,
                f.flow.dst.service.as_ref().map(|s| s.name.as_str()),
                f.flow.dst.pod.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (40000, cluster_ip, Some("api"), Some(second.name.as_str())),
            (40001, backend_ip, None, Some(second.name.as_str())),
        ]
    );
    assert!(
        flows
            .iter()
            .all(|f| f.verdict.as_ref().is_some_and(|v| v.allowed))
    );
    let text = state.metrics().encode().unwrap();
    let total = |family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Two connections, 6 + 4 packets each: the backend leg's 4 + 4 are not added.
    assert_eq!(total("netpol_observe_flows_total{"), 2.0);
    assert_eq!(total("netpol_observe_flow_packets_total{"), 20.0);
}

/// 1,000 workloads, each talking to the next 100 (100,000 workload pairs, 200× the budget)
/// through the agent: every flow-labelled family stays at budget + one overflow series and
/// nothing is lost. (The full 1,000 × 999 all-to-all is checked at the metrics layer in
/// `metrics::tests`; through the agent it takes ~45 s in a debug build.)
#[test]
fn cardinality_stays_within_the_budget_with_1000_workloads() {
    const N: usize = 1000;
    const BUDGET: usize = 500;
    let inventory = Inventory {
        pods: (0..N).map(pod).collect(),
        ..Inventory::default()
    };
    let config = AgentConfig {
        max_flows: 10_000,
        node_name: Some("node-1".to_owned()),
        metrics: MetricsSettings {
            series_budget: BUDGET,
            pod_level: false,
        },
        ..AgentConfig::default()
    };
    let state = AgentState::new(config);
    let model = Model::new(Arc::new(inventory), &Subnets::default(), None).unwrap();
    state.set_model(Arc::new(model));
    let ips: Vec<IpAddr> = (0..N).map(|i| pod(i).ips[0]).collect();
    const PEERS: usize = 100;
    for (s, src) in ips.iter().enumerate() {
        for k in 1..=PEERS {
            let dst = &ips[(s + k) % N];
            let mut r = FlowRecord::new(Protocol::Tcp, *src, *dst, Some(8080));
            r.src.port = Some(40000);
            state.on_update(&FlowUpdate {
                record: r,
                new: true,
                delta_packets: Directional {
                    sent: 1,
                    received: 1,
                },
                delta_bytes: Directional {
                    sent: 60,
                    received: 40,
                },
                ended: false,
                opened: true,
            });
        }
    }
    let text = state.metrics().encode_text().unwrap();
    let flows = N * PEERS;
    for (family, per_flow) in [
        ("netpol_observe_flows_total{", 1),
        ("netpol_observe_flow_packets_total{", 2),
        ("netpol_observe_flow_bytes_total{", 100),
    ] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
        assert_eq!(lines.len(), BUDGET + 1, "{family}");
        let sum: u64 = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, (flows * per_flow) as u64, "{family}");
    }
    assert_eq!(state.flows(&FlowQuery::default()).len(), 10_000);
    assert!(text.contains(
        "netpol_observe_series_dropped_total{metric=\"netpol_observe_flows_total\"} 99500"
    ));
}

/// The agent's cached series record exactly what the record-based metric calls do
/// (same series, same values, same overflow), on a synthetic cluster whose flows overflow
/// a small budget; known flows' counters go to the same series as their first ones.
/// Flows keep the verdicts of the model that judged them: served before a model swap
/// (explained lazily) and after it (explained by the outgoing model at the swap), they
/// equal the full evaluation under the first model, policy names included; new flows get
/// the new model's verdicts.
#[test]
fn flows_keep_their_explained_verdicts_across_a_model_swap() {
    use crate::policy::synth;
    let mut inv = synth::cluster(10, 1_000, 5);
    inv.network_policies = synth::policies(100, 10, 7);
    let staged = synth::policies(100, 10, 8);
    let first =
        Arc::new(Model::new(Arc::new(inv.clone()), &Subnets::default(), Some(&staged)).unwrap());
    inv.network_policies.clear();
    let second = Arc::new(Model::new(Arc::new(inv.clone()), &Subnets::default(), None).unwrap());
    let state = AgentState::new(AgentConfig {
        node_name: Some("node-1".to_owned()),
        ..AgentConfig::default()
    });
    state.set_model(Arc::clone(&first));
    let flows = synth::flows(&inv, 2_000, 9);
    let update = |record: FlowRecord| FlowUpdate {
        record,
        new: true,
        delta_packets: Directional::default(),
        delta_bytes: Directional::default(),
        ended: false,
        opened: true,
    };
    for f in &flows {
        state.on_update(&update(f.clone()));
    }
    let want: BTreeMap<FlowId, ObservedFlow> = flows
        .iter()
        .map(|f| (FlowId::of(f), first.observe(f.clone())))
        .collect();
    // (A flow taken for the backend leg of a Service connection is not stored.)
    let check = |served: Vec<ObservedFlow>| {
        assert!(served.len() > want.len() * 9 / 10, "{} flows", served.len());
        for o in served {
            let w = &want[&FlowId::of(&o.flow)];
            assert_eq!(
                (&o.verdict, &o.staged_verdict),
                (&w.verdict, &w.staged_verdict)
            );
        }
    };
    let denied = want
        .values()
        .filter(|o| !o.verdict.as_ref().unwrap().allowed)
        .count();
    assert!(denied > 100, "{denied} denied flows");
    check(state.flows(&FlowQuery::default()));
    state.set_model(Arc::clone(&second));
    check(state.flows(&FlowQuery::default()));
    // A new flow is judged by the new model: no policy, allowed, no staged verdict.
    let mut late = flows[0].clone();
    late.src.port = Some(9);
    state.on_update(&update(late.clone()));
    let served = state.flows(&FlowQuery::default());
    let o = served
        .iter()
        .find(|o| FlowId::of(&o.flow) == FlowId::of(&late))
        .unwrap();
    assert_eq!(o.verdict, second.observe(late).verdict);
    assert!(o.verdict.as_ref().unwrap().allowed);
    assert_eq!(o.staged_verdict, None);
}

#[test]
fn cached_series_match_the_record_based_calls() {
    use crate::{metrics::MetricsConfig, policy::synth};
    const BUDGET: usize = 300;
    let mut inv = synth::cluster(10, 1_000, 11);
    inv.network_policies = synth::policies(100, 10, 7);
    let inv = Arc::new(inv);
    let staged = synth::policies(100, 10, 8);
    let config = AgentConfig {
        node_name: Some("node-1".to_owned()),
        metrics: MetricsSettings {
            series_budget: BUDGET,
            pod_level: false,
        },
        ..AgentConfig::default()
    };
    let state = AgentState::new(config);
    let model = Arc::new(Model::new(Arc::clone(&inv), &Subnets::default(), Some(&staged)).unwrap());
    state.set_model(Arc::clone(&model));
    let reference = Metrics::new(MetricsConfig {
        series_budget: BUDGET,
        pod_level: false,
    });
    reference.set_inventory_objects(&model.inventory);
    reference.set_unprotected(
        model
            .unprotected(Some("node-1"))
            .iter()
            .map(|(ns, dir, n)| (ns.as_str(), *dir, *n)),
    );
    let mut flows = synth::flows(&inv, 3_000, 5);
    for (i, f) in flows.iter_mut().enumerate() {
        f.src.port = Some(1024 + i as u16);
    }
    // This agent (node-1) counts the flows the cluster-wide rule gives it; the reference
    // records those.
    let here = |f: &FlowRecord| model.attribute(f).counted_on("node-1", false);
    let counted_here = flows.iter().filter(|f| here(f)).count();
    assert!(
        (100..2_000).contains(&counted_here),
        "{counted_here} of {} flows counted on node-1",
        flows.len()
    );
    for (round, new) in [(0, true), (1, false)] {
        for f in &flows {
            state.on_update(&FlowUpdate {
                record: f.clone(),
                new,
                delta_packets: Directional {
                    sent: 2,
                    received: round,
                },
                delta_bytes: Directional {
                    sent: 100,
                    received: 7,
                },
                ended: false,
                opened: true,
            });
            if !here(f) {
                continue;
            }
            let o = model.observe(f.clone());
            let verdict = model::overall_label(o.verdict.as_ref().map(model::compact).as_ref());
            reference.record_flow(&o.flow, new, 2 + round, 107, verdict);
            if !new {
                continue;
            }
            let v = o.verdict.as_ref().unwrap();
            if model::side_is_pod(v.egress.reason) && o.flow.src.pod.is_some() {
                reference.record_verdict(
                    &o.flow,
                    Direction::Egress,
                    model::side_label(v.egress.result),
                );
            }
            if model::side_is_pod(v.ingress.reason) && o.flow.dst.pod.is_some() {
                reference.record_verdict(
                    &o.flow,
                    Direction::Ingress,
                    model::side_label(v.ingress.result),
                );
            }
            let s = o.staged_verdict.as_ref().map(model::compact);
            reference.record_staged(&o.flow, model::overall_label(s.as_ref()));
        }
    }
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let got = sorted(state.metrics().encode().unwrap());
    let want = sorted(reference.encode().unwrap());
    assert!(
        got.iter()
            .any(|l| l.starts_with("netpol_observe_series_dropped_total{"))
    );
    assert_eq!(got, want);
}
/// A store full of active flows evicts some; their later updates are the same flows:
/// `flows_total` counts every flow once whatever the store's bound.
#[test]
fn flows_evicted_while_active_are_not_counted_again() {
    let state = AgentState::new(AgentConfig {
        max_flows: 2,
        ..AgentConfig::default()
    });
    let update = |port: u16, new: bool, ended: bool| {
        let mut r = FlowRecord::new(
            Protocol::Udp,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            Some(53),
        );
        r.src.port = Some(port);
        FlowUpdate {
            record: r,
            new,
            delta_packets: Directional {
                sent: 1,
                received: 0,
            },
            delta_bytes: Directional {
                sent: 50,
                received: 0,
            },
            ended,
            opened: true,
        }
    };
    for port in [1000, 1001, 1002] {
        state.on_update(&update(port, true, false));
    }
    // 1000 was evicted while active; its next updates (a delta, then its end) come back.
    state.on_update(&update(1000, false, false));
    state.on_update(&update(1000, false, true));
    let text = state.metrics().encode().unwrap();
    let sum = |family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sum("netpol_observe_flows_total{"), 3.0, "{text}");
    assert_eq!(sum("netpol_observe_flow_packets_total{"), 5.0, "{text}");
}
