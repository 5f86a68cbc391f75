//! Synthetic clusters, policies and flows: deterministic (seeded) inputs for the engine
//! benchmark (`cargo xtask bench engine`) and for the engine/reference agreement tests.
//!
//! The cluster has `namespaces` namespaces (labels `team`, `env`), `pods` pods spread evenly
//! (labels `app`, `tier`, sometimes `canary`), four container ports (`http` 8080/TCP,
//! `metrics` 9090/TCP, `dns` 53/UDP, `diameter` 3868/SCTP), 1 % hostNetwork pods, a few
//! deleted pods whose IP was reused, 10 nodes and one Service per namespace with a named
//! target port. Policies mix every construct: default-deny, podSelector and namespaceSelector
//! (AND and OR), matchExpressions with every operator, ipBlock with except, numeric, named and
//! ranged ports, egress and ingress.

use std::{collections::BTreeMap, net::IpAddr};

use jiff::Timestamp;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::{
    flow::{FlowRecord, Protocol},
    inventory::{
        ContainerPortInfo, Interner, Inventory, Labels, NamespaceInfo, NodeInfo, PodInfo,
        ServiceInfo, ServicePortInfo, TargetPort,
    },
};

/// A small deterministic PRNG (SplitMix64): no dependency, same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % (n.max(1) as u64)) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const APPS: usize = 10;
const TIERS: [&str; 3] = ["web", "api", "db"];

/// A random app of [`APPS`] and its pods' labels: app, tier, a template hash and, one pod in
/// ten, `canary`.
fn app_labels(rng: &mut Rng) -> (usize, Vec<(&'static str, String)>) {
    let app = rng.below(APPS);
    let mut labels = vec![
        ("app", format!("app-{app}")),
        ("tier", TIERS[app % 3].to_owned()),
        (
            "pod-template-hash",
            format!("{:x}", rng.next_u64() & 0xffff),
        ),
    ];
    if rng.chance(10) {
        labels.push(("canary", "true".into()));
    }
    (app, labels)
}
const TEAMS: usize = 5;
const NODES: usize = 10;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Interned labels (as an inventory build makes them).
fn labels_in(interner: &mut Interner, pairs: &[(&str, String)]) -> Labels {
    interner.labels(pairs.iter().map(|(k, v)| (*k, v.as_str())))
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// A synthetic cluster of `pods` pods in `namespaces` namespaces.
pub fn cluster(namespaces: usize, pods: usize, seed: u64) -> Inventory {
    let mut inv = Inventory::default();
    // Shared strings, label sets, workloads and port lists, as a real inventory build has.
    let mut interner = Interner::default();
    add_namespaces(&mut inv, &mut interner, namespaces);
    for n in 0..NODES {
        inv.nodes.push(NodeInfo {
            name: format!("node-{n}"),
            addresses: vec![IpAddr::from([192, 168, 0, n as u8 + 1])],
            pod_cidrs: Vec::new(),
            labels: Labels::default(),
        });
    }
    add_pods(
        &mut inv,
        &mut interner,
        namespaces,
        pods,
        &mut Rng::new(seed),
    );
    add_services(&mut inv, &mut interner, namespaces);
    inv.pods.sort_by(|a, b| {
        (&a.namespace, &a.name, a.created).cmp(&(&b.namespace, &b.name, b.created))
    });
    inv
}

/// Namespaces `ns-0`, `ns-1`, … with a team and an environment label.
fn add_namespaces(inv: &mut Inventory, interner: &mut Interner, namespaces: usize) {
    for n in 0..namespaces {
        let name = format!("ns-{n}");
        inv.namespaces.insert(
            name.clone(),
            NamespaceInfo {
                labels: labels_in(
                    interner,
                    &[
                        ("kubernetes.io/metadata.name", name.clone()),
                        ("team", format!("team-{}", n % TEAMS)),
                        ("env", if n % 2 == 0 { "prod" } else { "dev" }.to_owned()),
                    ],
                ),
                name,
            },
        );
    }
}

/// The pods, spread over the namespaces and nodes, with random apps and labels; 2 % of them
/// with a deleted earlier pod at the same address (IP reuse), 1 % hostNetwork.
fn add_pods(
    inv: &mut Inventory,
    interner: &mut Interner,
    namespaces: usize,
    pods: usize,
    rng: &mut Rng,
) {
    let t0: Timestamp = "2026-11-22T00:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let ports = interner.ports(vec![
        ContainerPortInfo {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        },
        ContainerPortInfo {
            name: Some("metrics".into()),
            port: 9090,
            protocol: Protocol::Tcp,
        },
        ContainerPortInfo {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
        ContainerPortInfo {
            name: Some("diameter".into()),
            port: 3868,
            protocol: Protocol::Sctp,
        },
    ]);
    for i in 0..pods {
        let ns = i % namespaces.max(1);
        let (app, l) = app_labels(rng);
        let node = rng.below(NODES);
        let host_network = rng.chance(1);
        let ip = if host_network {
            IpAddr::from([192, 168, 0, node as u8 + 1])
        } else {
            pod_ip(i)
        };
        let created = t0
            .checked_add(jiff::SignedDuration::from_secs(i as i64))
            .unwrap_or(t0);
        inv.pods.push(PodInfo {
            namespace: interner.name(&format!("ns-{ns}")),
            name: format!("app-{app}-{i}").into(),
            uid: format!("uid-{i}").into(),
            selector_labels: labels_in(interner, &[("app", format!("app-{app}"))]),
            labels: labels_in(interner, &l),
            ips: vec![ip],
            host_network,
            node_name: Some(interner.name(&format!("node-{node}"))),
            workload: interner.workload("Deployment", &format!("app-{app}")),
            container_ports: std::sync::Arc::clone(&ports),
            created: Some(created),
            deleted: None,
        });
        // 2 %: an earlier pod held the same IP and was deleted (IP reuse).
        if !host_network && rng.chance(2) {
            let other = (ns + 1) % namespaces.max(1);
            inv.pods.push(PodInfo {
                namespace: interner.name(&format!("ns-{other}")),
                name: format!("old-{i}").into(),
                uid: format!("old-uid-{i}").into(),
                labels: labels_in(interner, &[("app", "old".into()), ("tier", "db".into())]),
                selector_labels: labels_in(interner, &[("app", "old".into())]),
                ips: vec![ip],
                host_network: false,
                node_name: Some(interner.name(&format!("node-{node}"))),
                workload: interner.workload("Pod", &format!("old-{i}")),
                container_ports: std::sync::Arc::clone(&ports),
                created: Some(t0),
                deleted: Some(created),
            });
        }
    }
}

/// A Service `app-0` per namespace (a named and a numbered target port), and
/// `ns-0/kubernetes` without selector, its endpoint outside the pod network.
fn add_services(inv: &mut Inventory, interner: &mut Interner, namespaces: usize) {
    for n in 0..namespaces {
        inv.services.push(ServiceInfo {
            namespace: format!("ns-{n}"),
            name: "app-0".into(),
            cluster_ips: vec![IpAddr::from([10, 96, (n >> 8) as u8, n as u8])],
            selector: Some(labels_in(interner, &[("app", "app-0".into())])),
            ports: vec![
                ServicePortInfo {
                    name: Some("web".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Name("http".into()),
                },
                ServicePortInfo {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                    target_port: TargetPort::Number(53),
                },
            ],
            service_type: Default::default(),
        });
    }
    // A Service without selector whose endpoints are addresses outside the pod network (the
    // API server behind `default/kubernetes`): judged on the endpoint and its port.
    inv.services.push(ServiceInfo {
        namespace: "ns-0".into(),
        name: "kubernetes".into(),
        cluster_ips: vec![IpAddr::from([10, 96, 255, 1])],
        selector: None,
        ports: vec![ServicePortInfo {
            name: Some("https".into()),
            port: 443,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(6443),
        }],
        service_type: Default::default(),
    });
    inv.endpoint_slices
        .push(crate::inventory::EndpointSliceInfo {
            namespace: "ns-0".into(),
            name: "kubernetes".into(),
            service: Some("kubernetes".into()),
            endpoints: vec![crate::inventory::EndpointInfo {
                addresses: vec![IpAddr::from([192, 0, 2, 9])],
                pod: None,
                ready: true,
            }],
            ports: vec![crate::inventory::EndpointPortInfo {
                name: Some("https".into()),
                port: Some(6443),
                protocol: Protocol::Tcp,
            }],
        });
}

fn sel(match_labels: &[(&str, String)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    }
}

fn expr(key: &str, op: &str, values: &[String]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.to_vec()),
    }
}

fn random_selector(rng: &mut Rng) -> LabelSelector {
    let app = || format!("app-{}", 0);
    match rng.below(8) {
        0 => LabelSelector::default(),
        1 | 2 => sel(&[("app", format!("app-{}", rng.below(APPS)))], vec![]),
        3 => sel(
            &[],
            vec![expr(
                "app",
                "In",
                &[
                    format!("app-{}", rng.below(APPS)),
                    format!("app-{}", rng.below(APPS)),
                ],
            )],
        ),
        4 => sel(
            &[("tier", TIERS[rng.below(3)].to_owned())],
            vec![expr("canary", "DoesNotExist", &[])],
        ),
        5 => sel(
            &[],
            vec![
                expr("app", "NotIn", &[app()]),
                expr("canary", "Exists", &[]),
            ],
        ),
        6 => sel(&[], vec![expr("release", "NotIn", &["v1".into()])]),
        _ => sel(&[("app", "nothing".into())], vec![]),
    }
}

fn random_ns_selector(rng: &mut Rng) -> LabelSelector {
    match rng.below(4) {
        0 => LabelSelector::default(),
        1 => sel(&[("team", format!("team-{}", rng.below(TEAMS)))], vec![]),
        2 => sel(&[], vec![expr("env", "In", &["prod".into()])]),
        _ => sel(&[], vec![expr("env", "NotIn", &["prod".into()])]),
    }
}

fn random_peer(rng: &mut Rng) -> NetworkPolicyPeer {
    match rng.below(5) {
        0 => NetworkPolicyPeer {
            pod_selector: Some(random_selector(rng)),
            ..Default::default()
        },
        1 => NetworkPolicyPeer {
            namespace_selector: Some(random_ns_selector(rng)),
            ..Default::default()
        },
        2 => NetworkPolicyPeer {
            namespace_selector: Some(random_ns_selector(rng)),
            pod_selector: Some(random_selector(rng)),
            ..Default::default()
        },
        3 => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.128.0.0/12".into(),
                except: Some(vec![format!("10.128.{}.0/24", rng.below(4))]),
            }),
            ..Default::default()
        },
        _ => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "0.0.0.0/0".into(),
                except: Some(vec!["10.0.0.0/8".into()]),
            }),
            ..Default::default()
        },
    }
}

fn random_ports(rng: &mut Rng) -> Option<Vec<NetworkPolicyPort>> {
    let port = |p: IntOrString, proto: Option<&str>, end: Option<i32>| NetworkPolicyPort {
        port: Some(p),
        protocol: proto.map(str::to_owned),
        end_port: end,
    };
    match rng.below(6) {
        0 => None,
        1 => Some(vec![port(IntOrString::Int(8080), None, None)]),
        2 => Some(vec![
            port(IntOrString::String("http".into()), None, None),
            port(IntOrString::Int(53), Some("UDP"), None),
        ]),
        3 => Some(vec![port(IntOrString::Int(9000), Some("TCP"), Some(9100))]),
        4 => Some(vec![port(
            IntOrString::String("diameter".into()),
            Some("SCTP"),
            None,
        )]),
        _ => Some(vec![NetworkPolicyPort {
            protocol: Some("UDP".into()),
            ..Default::default()
        }]),
    }
}

/// `count` random policies over a cluster of `namespaces` namespaces. About one in ten is a
/// namespace default-deny; the others mix every construct.
pub fn policies(count: usize, namespaces: usize, seed: u64) -> Vec<NetworkPolicy> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    (0..count)
        .map(|i| {
            let ns = format!("ns-{}", rng.below(namespaces.max(1)));
            let meta = ObjectMeta {
                name: Some(format!("p-{i}")),
                namespace: Some(ns),
                ..Default::default()
            };
            let spec = if rng.chance(10) {
                NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(if rng.chance(50) {
                        vec!["Ingress".into()]
                    } else {
                        vec!["Ingress".into(), "Egress".into()]
                    }),
                    ..Default::default()
                }
            } else {
                let rules = 1 + rng.below(3);
                let ingress = rng.chance(70).then(|| {
                    (0..rules)
                        .map(|_| NetworkPolicyIngressRule {
                            from: rng.chance(80).then(|| {
                                (0..1 + rng.below(2))
                                    .map(|_| random_peer(&mut rng))
                                    .collect()
                            }),
                            ports: random_ports(&mut rng),
                        })
                        .collect()
                });
                let egress = rng.chance(40).then(|| {
                    (0..rules)
                        .map(|_| NetworkPolicyEgressRule {
                            to: rng.chance(80).then(|| {
                                (0..1 + rng.below(2))
                                    .map(|_| random_peer(&mut rng))
                                    .collect()
                            }),
                            ports: random_ports(&mut rng),
                        })
                        .collect()
                });
                let policy_types = match rng.below(3) {
                    0 => None,
                    1 => Some(vec!["Ingress".into(), "Egress".into()]),
                    _ => Some(vec![
                        if egress.is_some() {
                            "Egress"
                        } else {
                            "Ingress"
                        }
                        .into(),
                    ]),
                };
                NetworkPolicySpec {
                    pod_selector: Some(random_selector(&mut rng)),
                    ingress,
                    egress,
                    policy_types,
                }
            };
            NetworkPolicy {
                metadata: meta,
                spec: Some(spec),
            }
        })
        .collect()
}

/// `count` random flows over `inventory`: mostly pod to pod, some to Services' ClusterIPs,
/// nodes and outside addresses, on the model's ports and others, TCP/UDP/SCTP/ICMP, with
/// times so that reused IPs resolve. Attribution fields are left empty (the engine looks the
/// addresses up).
pub fn flows(inventory: &Inventory, count: usize, seed: u64) -> Vec<FlowRecord> {
    let mut rng = Rng::new(seed ^ 0xf10e);
    let pod_ips: Vec<IpAddr> = inventory
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let svc_ips: Vec<IpAddr> = inventory
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().copied())
        .collect();
    let node_ips: Vec<IpAddr> = inventory
        .nodes
        .iter()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    let t0: Timestamp = "2026-11-22T00:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let t: Timestamp = "2026-11-22T12:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let addr = |rng: &mut Rng, dst: bool| -> IpAddr {
        match rng.below(20) {
            0 if !node_ips.is_empty() => *rng.pick(&node_ips),
            1 => IpAddr::from([203, 0, 113, rng.below(256) as u8]),
            2 => IpAddr::from([10, 1, 2, rng.below(256) as u8]),
            3 | 4 if dst && !svc_ips.is_empty() => *rng.pick(&svc_ips),
            _ if !pod_ips.is_empty() => *rng.pick(&pod_ips),
            _ => IpAddr::from([10, 0, 0, 1]),
        }
    };
    (0..count)
        .map(|_| {
            let src = addr(&mut rng, false);
            let dst = addr(&mut rng, true);
            let (protocol, port) = match rng.below(10) {
                0 => (Protocol::Udp, Some(53)),
                1 => (Protocol::Sctp, Some(3868)),
                2 => (Protocol::Icmp, None),
                3 => (Protocol::Tcp, Some(80)),
                4 => (Protocol::Tcp, Some(9000 + rng.below(200) as u16)),
                5 => (Protocol::Udp, Some(1000 + rng.below(100) as u16)),
                6 => (Protocol::Tcp, Some(9090)),
                _ => (Protocol::Tcp, Some(8080)),
            };
            let mut f = FlowRecord::new(protocol, src, dst, port);
            f.first_seen = match rng.below(10) {
                0 => None,
                // Early in the day: some reused IPs still belonged to their first pod.
                1 => t0
                    .checked_add(jiff::SignedDuration::from_secs(
                        rng.below(inventory.pods.len().max(1)) as i64,
                    ))
                    .ok(),
                _ => Some(t),
            };
            f
        })
        .collect()
}

/// One kind of pod change ([`churn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodChange {
    /// A new pod (sometimes on the address of a deleted one).
    Add,
    /// A live pod deleted: kept with its deletion time (a tombstone).
    Delete,
    /// A live pod's labels changed (another app, canary toggled).
    Labels,
    /// A live pod's address changed (a fresh one).
    Ip,
}

/// Applies one random pod change to `inventory` (pods only; namespaces, Services and
/// policies untouched) at time `now`, with `serial` making the new pod's name, uid and
/// address unique; the pods stay in inventory order. Returns the change and the changed
/// pod's uid. The changes are what a pod watch delivers at cluster scale: adds, deletes,
/// label and address changes.
pub fn churn(
    inventory: &mut Inventory,
    rng: &mut Rng,
    serial: usize,
    now: Timestamp,
) -> (PodChange, String) {
    let mut interner = Interner::default();
    let live: Vec<usize> = (0..inventory.pods.len())
        .filter(|i| inventory.pods[*i].deleted.is_none() && !inventory.pods[*i].host_network)
        .collect();
    let change = match rng.below(4) {
        _ if live.is_empty() => PodChange::Add,
        0 => PodChange::Add,
        1 => PodChange::Delete,
        2 => PodChange::Labels,
        _ => PodChange::Ip,
    };
    let fresh_ip = |serial: usize| {
        IpAddr::from([
            10,
            200 + (serial >> 16) as u8,
            (serial >> 8) as u8,
            serial as u8,
        ])
    };
    let uid = match change {
        PodChange::Add => {
            let template = inventory.pods[rng.below(inventory.pods.len())].clone();
            let namespaces: Vec<&String> = inventory.namespaces.keys().collect();
            let ns = (*rng.pick(&namespaces)).clone();
            let (app, l) = app_labels(rng);
            // Sometimes the address of a deleted pod (IP reuse).
            let reused = inventory
                .pods
                .iter()
                .filter(|p| p.deleted.is_some() && !p.host_network)
                .nth(rng.below(8))
                .and_then(|p| p.ips.first().copied())
                .filter(|_| rng.chance(30));
            let uid = format!("churn-uid-{serial}");
            inventory.pods.push(PodInfo {
                namespace: interner.name(&ns),
                name: format!("app-{app}-churn-{serial}").into(),
                uid: uid.as_str().into(),
                labels: labels_in(&mut interner, &l),
                selector_labels: labels_in(&mut interner, &[("app", format!("app-{app}"))]),
                ips: vec![reused.unwrap_or_else(|| fresh_ip(serial))],
                host_network: false,
                node_name: template.node_name,
                workload: interner.workload("Deployment", &format!("app-{app}")),
                container_ports: template.container_ports,
                created: Some(now),
                deleted: None,
            });
            uid
        }
        PodChange::Delete => {
            let p = &mut inventory.pods[*rng.pick(&live)];
            p.deleted = Some(now);
            p.uid.to_string()
        }
        PodChange::Labels => {
            let p = &mut inventory.pods[*rng.pick(&live)];
            let app = rng.below(APPS);
            let mut l: Vec<(&str, String)> = p
                .labels
                .iter()
                .filter(|(k, _)| !matches!(&**k, "app" | "tier" | "canary"))
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            l.push(("app", format!("app-{app}")));
            l.push(("tier", TIERS[app % 3].to_owned()));
            if rng.chance(20) {
                l.push(("canary", "true".into()));
            }
            let labels = labels_in(&mut interner, &l);
            p.labels = labels;
            p.uid.to_string()
        }
        PodChange::Ip => {
            let p = &mut inventory.pods[*rng.pick(&live)];
            p.ips = vec![fresh_ip(serial)];
            p.uid.to_string()
        }
    };
    crate::inventory::build::finish(inventory);
    (change, uid)
}
