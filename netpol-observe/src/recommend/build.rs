//! From [`Observations`] to NetworkPolicies: a default-deny per namespace, one policy per
//! workload whose rules are exactly the observed edges (plus the documented aggregations).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::LabelSelector, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};

use super::{
    RecommendConfig, annotations,
    cidr::{aggregate, world_except},
    observe::{EdgeKey, Labels, Observations, PeerKey, Span, WorkloadObs},
};
use crate::{attribution::Subnets, flow::Protocol, inventory::ContainerPortInfo};

/// Label key of the namespace name, set on every namespace by the API server.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A peer as it will be written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerSpec {
    /// Pods by selector; `namespace` is `None` for the policy's own namespace.
    Pods {
        namespace: Option<String>,
        labels: Labels,
    },
    /// An address block.
    Block { cidr: IpNet, except: Vec<IpNet> },
}

/// A port as it will be written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortVal {
    Number(u16),
    Name(String),
}

/// The ports of one peer: `None` = every port and protocol (ICMP, which NetworkPolicy cannot
/// name), else `(protocol, port)` pairs.
type PortSet = Option<BTreeSet<(Protocol, PortVal)>>;

/// What the builder reads besides the observations.
pub(crate) struct Context<'c> {
    pub(crate) config: &'c RecommendConfig,
    pub(crate) subnets: &'c Subnets,
    /// Container ports per workload `(namespace, kind, name)`.
    pub(crate) ports: &'c HashMap<(String, String, String), Vec<ContainerPortInfo>>,
    /// Pod, service and extra cluster ranges excluded from "whole Internet" blocks.
    pub(crate) cluster_ranges: &'c [IpNet],
}

/// Builder output.
pub(crate) struct Built {
    pub(crate) policies: Vec<NetworkPolicy>,
    pub(crate) notes: Vec<String>,
}

/// One direction's rules for one workload, being collected.
#[derive(Default)]
struct Direction {
    peers: BTreeMap<PeerSpec, PortSet>,
    /// External addresses per port: (subnet name, address).
    external: BTreeMap<PortKey, BTreeSet<(String, IpAddr)>>,
    span: Span,
}

type PortKey = Option<(Protocol, PortVal)>;

fn add_peer(peers: &mut BTreeMap<PeerSpec, PortSet>, peer: PeerSpec, port: PortKey) {
    use std::collections::btree_map::Entry;
    match peers.entry(peer) {
        Entry::Vacant(e) => {
            e.insert(port.map(|p| BTreeSet::from([p])));
        }
        Entry::Occupied(mut e) => match (e.get_mut(), port) {
            (Some(set), Some(p)) => {
                set.insert(p);
            }
            (set, None) => *set = None,
            (None, Some(_)) => {}
        },
    }
}

pub(crate) fn build(obs: &Observations<'_>, cx: &Context<'_>) -> Built {
    let mut notes = Vec::new();
    let in_scope = |w: &WorkloadObs<'_>| {
        !cx.config
            .exclude_namespaces
            .iter()
            .any(|n| n == w.namespace)
    };
    // Per workload: (ingress, egress).
    let mut dirs: BTreeMap<u32, (Direction, Direction)> = BTreeMap::new();
    let mut edges: Vec<(&EdgeKey<'_>, &Span)> =
        obs.edges.iter().map(|(k, v)| (k, &v.span)).collect();
    edges.sort_by_key(|(k, _)| (k.client, k.server, k.protocol, k.port, k.dns));
    for (edge, span) in edges {
        if let PeerKey::Workload(s) = edge.server
            && in_scope(&obs.workloads[s as usize])
        {
            let ports = ports_of(obs, cx, edge);
            let dir = &mut dirs.entry(s).or_default().0;
            dir.span.merge(span);
            let ns = obs.workloads[s as usize].namespace;
            add_edge_peer(obs, dir, edge.client, ns, &ports, edge.dns, &mut notes);
        }
        if let PeerKey::Workload(c) = edge.client
            && in_scope(&obs.workloads[c as usize])
        {
            let ports = ports_of(obs, cx, edge);
            let dir = &mut dirs.entry(c).or_default().1;
            dir.span.merge(span);
            let ns = obs.workloads[c as usize].namespace;
            add_edge_peer(obs, dir, edge.server, ns, &ports, edge.dns, &mut notes);
        }
    }

    let window = annotations::window(&obs.window);
    let mut by_ns: BTreeMap<&str, Vec<NetworkPolicy>> = BTreeMap::new();
    let mut ns_span: BTreeMap<&str, Span> = BTreeMap::new();
    let mut unselectable: BTreeSet<&str> = BTreeSet::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    let mut order: Vec<u32> = dirs.keys().copied().collect();
    order.sort_by_key(|w| {
        let w = &obs.workloads[*w as usize];
        (w.namespace, w.name, w.kind)
    });
    for w_idx in order {
        let Some((mut ingress, mut egress)) = dirs.remove(&w_idx) else {
            continue;
        };
        let w = &obs.workloads[w_idx as usize];
        ns_span.entry(w.namespace).or_default().merge(&w.span);
        let Some(selector) = w.selector.filter(|s| !s.is_empty()) else {
            notes.push(format!(
                "{}/{} {}: no selector labels, no policy can select it; namespace {} gets no default-deny",
                w.namespace, w.kind, w.name, w.namespace
            ));
            unselectable.insert(w.namespace);
            continue;
        };
        let mut aggregation = Vec::new();
        resolve_external(cx, &mut ingress, "ingress", &mut aggregation, &mut notes);
        resolve_external(cx, &mut egress, "egress", &mut aggregation, &mut notes);

        let mut name = format!("{}-np", w.name);
        if name == "default-deny" || used.contains(&(w.namespace.to_owned(), name.clone())) {
            name = format!("{}-{}-np", w.name, w.kind.to_ascii_lowercase());
        }
        used.insert((w.namespace.to_owned(), name.clone()));

        let mut ann = annotations::evidence(&w.span, &window);
        ann.insert(
            annotations::WORKLOAD.to_owned(),
            format!("{}/{}", w.kind, w.name),
        );
        if let Some(warning) = annotations::brief_warning(w, &obs.window, cx.config) {
            ann.insert(annotations::WARNING.to_owned(), warning);
        }
        if !aggregation.is_empty() {
            ann.insert(annotations::AGGREGATION.to_owned(), aggregation.join("; "));
        }
        let ingress_rules: Vec<NetworkPolicyIngressRule> = rules(ingress.peers)
            .into_iter()
            .map(|(from, ports)| NetworkPolicyIngressRule {
                from: Some(from),
                ports,
            })
            .collect();
        let egress_rules: Vec<NetworkPolicyEgressRule> = rules(egress.peers)
            .into_iter()
            .map(|(to, ports)| NetworkPolicyEgressRule {
                to: Some(to),
                ports,
            })
            .collect();
        by_ns.entry(w.namespace).or_default().push(NetworkPolicy {
            metadata: meta(&name, w.namespace, ann),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector_of(selector)),
                policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                ingress: (!ingress_rules.is_empty()).then_some(ingress_rules),
                egress: (!egress_rules.is_empty()).then_some(egress_rules),
            }),
        });
    }

    let mut policies = Vec::new();
    for (ns, span) in &ns_span {
        let mut list = by_ns.remove(ns).unwrap_or_default();
        if cx.config.default_deny && !unselectable.contains(ns) {
            policies.push(NetworkPolicy {
                metadata: meta("default-deny", ns, annotations::evidence(span, &window)),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                    ingress: None,
                    egress: None,
                }),
            });
        }
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        policies.extend(list);
    }
    notes.sort();
    notes.dedup();
    Built { policies, notes }
}

fn meta(name: &str, ns: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "netpol-observe".to_owned(),
            )]
            .into(),
        ),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

fn selector_of(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

/// The ports of an edge as written in a rule: DNS gets both UDP and TCP; a port with a name on
/// the server workload's containers is written by name; ICMP is every port.
fn ports_of(obs: &Observations<'_>, cx: &Context<'_>, edge: &EdgeKey<'_>) -> Vec<PortKey> {
    let Some(port) = edge.port.filter(|_| edge.protocol.has_ports()) else {
        return vec![None];
    };
    if edge.dns {
        return vec![
            Some((Protocol::Tcp, PortVal::Number(port))),
            Some((Protocol::Udp, PortVal::Number(port))),
        ];
    }
    let named = match edge.server {
        PeerKey::Workload(s) => {
            let w = &obs.workloads[s as usize];
            cx.ports
                .get(&(w.namespace.to_owned(), w.kind.to_owned(), w.name.to_owned()))
                .and_then(|list| {
                    list.iter()
                        .find(|p| p.port == port && p.protocol == edge.protocol)
                        .and_then(|p| p.name.clone())
                })
        }
        _ => None,
    };
    vec![Some((
        edge.protocol,
        named.map_or(PortVal::Number(port), PortVal::Name),
    ))]
}

#[allow(clippy::too_many_arguments)]
fn add_edge_peer(
    obs: &Observations<'_>,
    dir: &mut Direction,
    peer: PeerKey<'_>,
    policy_ns: &str,
    ports: &[PortKey],
    dns: bool,
    notes: &mut Vec<String>,
) {
    let specs: Vec<PeerSpec> = match peer {
        PeerKey::Workload(p) => {
            let pw = &obs.workloads[p as usize];
            match pw.selector.filter(|s| !s.is_empty()) {
                Some(labels) => vec![PeerSpec::Pods {
                    namespace: (pw.namespace != policy_ns).then(|| pw.namespace.to_owned()),
                    labels: labels.clone(),
                }],
                None => {
                    notes.push(format!(
                        "{}/{} {}: no selector labels; as a peer it is written as its observed pod addresses",
                        pw.namespace, pw.kind, pw.name
                    ));
                    pw.ips.iter().map(|ip| host_block(*ip)).collect()
                }
            }
        }
        PeerKey::Node(_, ip) => vec![host_block(ip)],
        PeerKey::External(subnet, ip) => {
            if dns {
                vec![host_block(ip)]
            } else {
                for port in ports {
                    dir.external
                        .entry(port.clone())
                        .or_default()
                        .insert((subnet.to_owned(), ip));
                }
                Vec::new()
            }
        }
    };
    for spec in specs {
        for port in ports {
            add_peer(&mut dir.peers, spec.clone(), port.clone());
        }
    }
}

fn host_block(ip: IpAddr) -> PeerSpec {
    PeerSpec::Block {
        cidr: IpNet::from(ip),
        except: Vec::new(),
    }
}

/// Turns the external addresses of a direction into blocks: named subnets by their CIDRs,
/// other addresses aggregated within the bound, many public addresses as the whole Internet
/// minus the cluster and private ranges.
fn resolve_external(
    cx: &Context<'_>,
    dir: &mut Direction,
    direction: &str,
    aggregation: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let external = std::mem::take(&mut dir.external);
    for (port, addrs) in external {
        let mut blocks: BTreeSet<PeerSpec> = BTreeSet::new();
        let mut private = Vec::new();
        let mut world = Vec::new();
        for (subnet, ip) in addrs {
            match subnet.as_str() {
                "world" => world.push(ip),
                "private" => private.push(ip),
                named => {
                    let nets: Vec<IpNet> = cx
                        .subnets
                        .entries()
                        .iter()
                        .filter(|e| e.name == named)
                        .map(|e| e.net)
                        .collect();
                    if nets.is_empty() {
                        notes.push(format!(
                            "subnet {named:?} is not in the subnets file: its addresses are written as observed"
                        ));
                        private.push(ip);
                    }
                    for net in nets {
                        blocks.insert(PeerSpec::Block {
                            cidr: net,
                            except: Vec::new(),
                        });
                    }
                }
            }
        }
        let bound_v4 = cx.config.aggregate_v4;
        let bound_v6 = cx.config.aggregate_v6;
        for net in aggregate(&private, bound_v4, bound_v6) {
            blocks.insert(PeerSpec::Block {
                cidr: net,
                except: Vec::new(),
            });
        }
        let distinct: BTreeSet<IpAddr> = world.iter().copied().collect();
        if distinct.len() > cx.config.world_threshold {
            for all in ["0.0.0.0/0", "::/0"] {
                if let Ok(all) = all.parse::<IpNet>() {
                    blocks.insert(PeerSpec::Block {
                        cidr: all,
                        except: world_except(all, cx.cluster_ranges),
                    });
                }
            }
            aggregation.push(format!(
                "{direction} {}: {} distinct public addresses (more than {}), allowed as 0.0.0.0/0 and ::/0 except cluster and private ranges",
                port_text(&port),
                distinct.len(),
                cx.config.world_threshold
            ));
        } else {
            let nets = aggregate(&world, bound_v4, bound_v6);
            if nets.iter().any(|n| n.prefix_len() < n.max_prefix_len()) {
                aggregation.push(format!(
                    "{direction} {}: public addresses aggregated into prefixes of at least /{bound_v4} (IPv4) and /{bound_v6} (IPv6)",
                    port_text(&port)
                ));
            }
            for net in nets {
                blocks.insert(PeerSpec::Block {
                    cidr: net,
                    except: Vec::new(),
                });
            }
        }
        for b in blocks {
            add_peer(&mut dir.peers, b, port.clone());
        }
    }
}

fn port_text(port: &PortKey) -> String {
    match port {
        None => "all ports".to_owned(),
        Some((proto, PortVal::Number(n))) => format!("{n}/{proto}"),
        Some((proto, PortVal::Name(n))) => format!("{n}/{proto}"),
    }
}

/// Groups peers with the same ports into one rule (exact: the rule's peers × ports are all
/// observed), in a stable order.
fn rules(
    peers: BTreeMap<PeerSpec, PortSet>,
) -> Vec<(Vec<NetworkPolicyPeer>, Option<Vec<NetworkPolicyPort>>)> {
    let mut grouped: BTreeMap<PortSet, Vec<PeerSpec>> = BTreeMap::new();
    for (peer, ports) in peers {
        grouped.entry(ports).or_default().push(peer);
    }
    grouped
        .into_iter()
        .map(|(ports, peers)| {
            let peers = peers.into_iter().map(to_peer).collect();
            let ports = ports.map(|set| {
                set.into_iter()
                    .map(|(proto, val)| NetworkPolicyPort {
                        protocol: Some(proto.as_str().to_owned()),
                        port: Some(match val {
                            PortVal::Number(n) => IntOrString::Int(i32::from(n)),
                            PortVal::Name(s) => IntOrString::String(s),
                        }),
                        end_port: None,
                    })
                    .collect()
            });
            (peers, ports)
        })
        .collect()
}

fn to_peer(spec: PeerSpec) -> NetworkPolicyPeer {
    match spec {
        PeerSpec::Pods { namespace, labels } => NetworkPolicyPeer {
            ip_block: None,
            namespace_selector: namespace.map(|ns| LabelSelector {
                match_labels: Some([(NAMESPACE_NAME_LABEL.to_owned(), ns)].into()),
                match_expressions: None,
            }),
            pod_selector: Some(selector_of(&labels)),
        },
        PeerSpec::Block { cidr, except } => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_string(),
                except: (!except.is_empty())
                    .then(|| except.iter().map(ToString::to_string).collect()),
            }),
            namespace_selector: None,
            pod_selector: None,
        },
    }
}
