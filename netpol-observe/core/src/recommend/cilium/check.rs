//! Evaluates flows against CiliumNetworkPolicies — the subset `recommend --format cilium`
//! writes — with Cilium's semantics: allow lists; an endpoint selected by a policy with an
//! `ingress` (`egress`) section is in default deny for that direction, and a flow must match a
//! rule of a policy selecting it (an empty rule `{}` matches nothing); selectors of a rule
//! without namespace label mean the policy's namespace; CIDR rules match only addresses
//! outside the cluster (never pods, nodes or the API server), which the entities `host` (the
//! endpoint's own node), `remote-node` and `kube-apiserver` select; `toFQDNs` matches the
//! addresses the client resolved from those names (the flow's `dst.dns_names`); ingress from
//! the endpoint's own node is always allowed (Cilium's `allow-localhost`), egress to it is
//! not; node-local DNS (`169.254.20.10`) is the client's own node (a hostNetwork cache); ports are the ports after Service translation, a named port is the destination pod's
//! container port of that name.
//!
//! Pass attributed flows ([`crate::attribution::Attributor::attribute`]).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::types::{
    CidrRule, CiliumNetworkPolicy, EndpointSelector, Entity, FqdnSelector, PortRule,
};
use crate::{
    attribution::Attributor,
    flow::{Endpoint, FlowRecord, Protocol},
    inventory::{ContainerPortInfo, Inventory},
    recommend::{NODE_LOCAL_DNS, dns_names::normalize},
};

/// What Cilium does with one direction of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// No policy with rules for this direction selects the endpoint (or it is not a pod).
    NotEnforced,
    /// Always allowed (ingress from the endpoint's own node, a pod's traffic to itself).
    Implicit,
    /// Allowed by these policies (`ns/name`, sorted).
    Allowed(Vec<String>),
    /// Denied; these policies (`ns/name`, sorted) put the endpoint in default deny.
    Denied(Vec<String>),
}

impl Side {
    fn allows(&self) -> bool {
        !matches!(self, Side::Denied(_))
    }
}

/// The verdict on a flow: both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiliumVerdict {
    /// Both sides allow it.
    pub allowed: bool,
    /// At the destination pod.
    pub ingress: Side,
    /// At the source pod.
    pub egress: Side,
}

/// One end of a flow as Cilium identifies it.
#[derive(Debug)]
enum Identity<'f> {
    Pod {
        namespace: String,
        name: Option<String>,
        labels: BTreeMap<String, String>,
        node: Option<String>,
        ports: Vec<ContainerPortInfo>,
    },
    Node(String),
    ApiServer,
    World {
        ips: Vec<IpAddr>,
        names: &'f [String],
    },
}

/// Evaluates flows against a set of CiliumNetworkPolicies.
#[derive(Debug)]
pub struct Checker<'a> {
    policies: &'a [CiliumNetworkPolicy],
    inventory: &'a Inventory,
    attributor: &'a Attributor,
}

impl<'a> Checker<'a> {
    /// A checker over `policies`, identifying endpoints from `inventory` (pods' labels and
    /// nodes, the Service endpoints) with `attributor` (its Service translation).
    pub fn new(
        policies: &'a [CiliumNetworkPolicy],
        inventory: &'a Inventory,
        attributor: &'a Attributor,
    ) -> Self {
        Checker {
            policies,
            inventory,
            attributor,
        }
    }

    /// The verdict on an attributed flow.
    pub fn evaluate(&self, f: &FlowRecord) -> CiliumVerdict {
        let src = self.identity(&f.src, f, false);
        let dst = self.identity(&f.dst, f, true);
        let port = self.port(f);
        if let (Identity::Pod { name: Some(a), .. }, Identity::Pod { name: Some(b), .. }) =
            (&src, &dst)
            && a == b
            && f.src.namespace == f.dst.namespace
        {
            return CiliumVerdict {
                allowed: true,
                ingress: Side::Implicit,
                egress: Side::Implicit,
            };
        }
        let egress = self.side(&src, &dst, f.protocol, port, true);
        let ingress = self.side(&dst, &src, f.protocol, port, false);
        CiliumVerdict {
            allowed: egress.allows() && ingress.allows(),
            ingress,
            egress,
        }
    }

    fn identity<'f>(&self, ep: &'f Endpoint, f: &FlowRecord, dst: bool) -> Identity<'f> {
        let service = ep.service.as_ref().filter(|_| dst);
        if ep.namespace.is_none()
            && service.is_some_and(|s| s.namespace == "default" && s.name == "kubernetes")
        {
            return Identity::ApiServer;
        }
        if let Some(ns) = &ep.namespace {
            let at = f.seen_at();
            let pod = ep
                .pod
                .as_deref()
                .and_then(|n| self.attributor.pod_by_name(ns, n, at));
            if let Some(p) = pod {
                if p.host_network {
                    return Identity::Node(p.node_name.as_deref().unwrap_or_default().to_owned());
                }
                return Identity::Pod {
                    namespace: ns.clone(),
                    name: ep.pod.clone(),
                    labels: p
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    node: p.node_name.as_deref().map(str::to_owned),
                    ports: p.container_ports.to_vec(),
                };
            }
            return Identity::Pod {
                namespace: ns.clone(),
                name: ep.pod.clone(),
                labels: ep.labels.clone().unwrap_or_default(),
                node: None,
                ports: Vec::new(),
            };
        }
        if let Some(node) = &ep.node {
            return Identity::Node(node.clone());
        }
        if dst && ep.ip == NODE_LOCAL_DNS {
            // The node-local DNS cache on the client's node (hostNetwork): Cilium sees the host.
            let at = f.seen_at();
            let node = f
                .src
                .namespace
                .as_deref()
                .zip(f.src.pod.as_deref())
                .and_then(|(ns, pod)| self.attributor.pod_by_name(ns, pod, at))
                .and_then(|p| p.node_name.as_deref());
            if let Some(node) = node {
                return Identity::Node(node.to_owned());
            }
        }
        if let Some(s) = service
            && let Some(svc) = self
                .inventory
                .services
                .iter()
                .find(|x| x.namespace == s.namespace && x.name == s.name)
            && let Some(eps) = self.inventory.address_endpoints(svc)
        {
            return Identity::World {
                ips: eps.addresses,
                names: &ep.dns_names,
            };
        }
        Identity::World {
            ips: vec![ep.ip],
            names: &ep.dns_names,
        }
    }

    /// The port the destination receives on (after Service translation).
    fn port(&self, f: &FlowRecord) -> Option<u16> {
        if !f.protocol.has_ports() {
            return None;
        }
        if f.dst.namespace.is_none()
            && let Some(s) = &f.dst.service
            && let Some(svc) = self
                .inventory
                .services
                .iter()
                .find(|x| x.namespace == s.namespace && x.name == s.name)
            && let Some(eps) = self.inventory.address_endpoints(svc)
        {
            let port = f.dst.port?;
            return Some(eps.port_for(port, f.protocol).unwrap_or(port));
        }
        self.attributor.backend_port(f)
    }

    /// The verdict of `subject`'s policies on its traffic with `peer` (`egress`: the subject
    /// sends).
    fn side(
        &self,
        subject: &Identity<'_>,
        peer: &Identity<'_>,
        protocol: Protocol,
        port: Option<u16>,
        egress: bool,
    ) -> Side {
        let Identity::Pod {
            namespace,
            labels,
            node,
            ports: own_ports,
            ..
        } = subject
        else {
            return Side::NotEnforced;
        };
        if !egress
            && let Identity::Node(n) = peer
            && node.as_deref() == Some(n.as_str())
        {
            return Side::Implicit;
        }
        let mut enforcing = Vec::new();
        let mut allowing = Vec::new();
        for p in self.policies.iter().filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && selects(&p.spec.endpoint_selector, namespace, labels)
        }) {
            let id = format!(
                "{}/{}",
                namespace,
                p.metadata.name.as_deref().unwrap_or_default()
            );
            let allowed = if egress {
                let Some(rules) = &p.spec.egress else {
                    continue;
                };
                rules.iter().any(|r| {
                    let peer_ports = match peer {
                        Identity::Pod { ports, .. } => ports.as_slice(),
                        _ => &[],
                    };
                    ports_match(r.to_ports.as_deref(), protocol, port, peer_ports)
                        && (r
                            .to_endpoints
                            .iter()
                            .flatten()
                            .any(|s| endpoint_matches(s, namespace, peer))
                            || r.to_entities
                                .iter()
                                .flatten()
                                .any(|e| entity_matches(*e, node.as_deref(), peer))
                            || r.to_cidr_set
                                .iter()
                                .flatten()
                                .any(|c| cidr_matches(c, peer))
                            || r.to_fqdns.iter().flatten().any(|q| fqdn_matches(q, peer)))
                })
            } else {
                let Some(rules) = &p.spec.ingress else {
                    continue;
                };
                rules.iter().any(|r| {
                    ports_match(r.to_ports.as_deref(), protocol, port, own_ports)
                        && (r
                            .from_endpoints
                            .iter()
                            .flatten()
                            .any(|s| endpoint_matches(s, namespace, peer))
                            || r.from_entities
                                .iter()
                                .flatten()
                                .any(|e| entity_matches(*e, node.as_deref(), peer))
                            || r.from_cidr_set
                                .iter()
                                .flatten()
                                .any(|c| cidr_matches(c, peer)))
                })
            };
            enforcing.push(id.clone());
            if allowed {
                allowing.push(id);
            }
        }
        enforcing.sort();
        allowing.sort();
        if enforcing.is_empty() {
            Side::NotEnforced
        } else if allowing.is_empty() {
            Side::Denied(enforcing)
        } else {
            Side::Allowed(allowing)
        }
    }
}

/// Whether `selector` (a policy's `endpointSelector`) selects the pod.
fn selects(
    selector: &EndpointSelector,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let label = |key: &str| -> Option<&str> {
        let key = key.strip_prefix("k8s:").unwrap_or(key);
        if key == "io.kubernetes.pod.namespace" {
            return Some(namespace);
        }
        labels.get(key).map(String::as_str)
    };
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| label(k) == Some(v.as_str()))
        && selector.match_expressions.iter().flatten().all(|r| {
            let value = label(&r.key);
            let values = r.values.as_deref().unwrap_or_default();
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether a rule's endpoint selector (in a policy of `policy_ns`) matches the peer.
fn endpoint_matches(selector: &EndpointSelector, policy_ns: &str, peer: &Identity<'_>) -> bool {
    let Identity::Pod {
        namespace, labels, ..
    } = peer
    else {
        return false;
    };
    let names_namespace =
        selector
            .match_labels
            .iter()
            .flatten()
            .any(|(k, _)| k.strip_prefix("k8s:").unwrap_or(k) == "io.kubernetes.pod.namespace")
            || selector.match_expressions.iter().flatten().any(|r| {
                r.key.strip_prefix("k8s:").unwrap_or(&r.key) == "io.kubernetes.pod.namespace"
            });
    (names_namespace || namespace == policy_ns) && selects(selector, namespace, labels)
}

fn entity_matches(entity: Entity, own_node: Option<&str>, peer: &Identity<'_>) -> bool {
    match (entity, peer) {
        (Entity::All, _) => true,
        (Entity::Host, Identity::Node(n)) => own_node == Some(n.as_str()),
        (Entity::RemoteNode, Identity::Node(n)) => own_node.is_some_and(|o| o != n),
        (Entity::KubeApiserver, Identity::ApiServer) => true,
        (Entity::World, Identity::World { .. }) => true,
        (Entity::Cluster, Identity::Pod { .. } | Identity::Node(_) | Identity::ApiServer) => true,
        _ => false,
    }
}

fn cidr_matches(rule: &CidrRule, peer: &Identity<'_>) -> bool {
    let Identity::World { ips, .. } = peer else {
        return false;
    };
    let Ok(net) = rule.cidr.parse::<IpNet>() else {
        return false;
    };
    let except: Vec<IpNet> = rule
        .except
        .iter()
        .flatten()
        .filter_map(|e| e.parse().ok())
        .collect();
    !ips.is_empty()
        && ips
            .iter()
            .all(|ip| net.contains(ip) && !except.iter().any(|e| e.contains(ip)))
}

fn fqdn_matches(selector: &FqdnSelector, peer: &Identity<'_>) -> bool {
    let Identity::World { names, .. } = peer else {
        return false;
    };
    names.iter().filter_map(|n| normalize(n)).any(|n| {
        match (&selector.match_name, &selector.match_pattern) {
            (Some(m), _) => normalize(m).is_some_and(|m| m == n),
            (None, Some(p)) => p == "*",
            (None, None) => false,
        }
    })
}

/// Whether the flow's protocol and port are in `to_ports` (`None`: every port and protocol).
/// A named port is looked up in `named` (the destination pod's container ports).
fn ports_match(
    to_ports: Option<&[PortRule]>,
    protocol: Protocol,
    port: Option<u16>,
    named: &[ContainerPortInfo],
) -> bool {
    let Some(rules) = to_ports else {
        return true;
    };
    let Some(port) = port.filter(|_| protocol.has_ports()) else {
        return false;
    };
    rules.iter().flat_map(|r| &r.ports).any(|p| {
        let proto_ok = match p.protocol.as_deref() {
            None | Some("ANY") => true,
            Some(x) => x == protocol.as_str(),
        };
        let port_ok = match p.port.parse::<u16>() {
            Ok(0) => true,
            Ok(n) => n == port,
            Err(_) => named.iter().any(|c| {
                c.name.as_deref() == Some(p.port.as_str())
                    && c.port == port
                    && c.protocol == protocol
            }),
        };
        proto_ok && port_ok
    })
}
