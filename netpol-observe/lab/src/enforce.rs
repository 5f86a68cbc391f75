//! NetworkPolicies (`networking.k8s.io/v1`, k8s-openapi types) compiled into nftables rules on
//! the lab node, in their own table [`TABLE`] (removal is one `nft delete table`).
//!
//! The compiled rules follow NetworkPolicy semantics:
//! - a pod is isolated for a direction when a policy selecting it has that policy type
//!   (`policyTypes` default: Ingress, plus Egress when the policy has egress rules);
//! - a connection needs the egress of its source (if isolated) AND the ingress of its
//!   destination (if isolated) to allow it; rules are unions, peers in one rule are unions;
//! - peers: `podSelector` (policy namespace), `namespaceSelector`, both (AND), `ipBlock` with
//!   `except`; ports with protocol (default TCP), named ports (resolved on the destination
//!   pod), `endPort` ranges; an empty/missing `from`/`to`/`ports` means all;
//! - stateful: `ct state established,related accept` first, so replies always pass;
//! - traffic to and from the node is never filtered (it does not cross the forward hook);
//! - the chain sits on the forward hook, after the Service DNAT, so Service traffic is judged on
//!   the backend pod and target port, as Kubernetes does.
//!
//! Denied packets are dropped (`drop`, the kernel's `NETFILTER_DROP`), never rejected.

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{
    model::{LabModel, PodModel},
    netns::{self, NetnsError},
    topology::Topology,
};
use crate::flow::Protocol;

/// The nftables table holding the compiled policies (family `inet`).
pub const TABLE: &str = "npo_lab_policy";

/// Policies that cannot be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// A file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document does not parse.
    #[error("{path}: document {document}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based document number in the file.
        document: usize,
        /// What is wrong (with serde's location).
        message: String,
    },
    /// The policies cannot be loaded (file, document, object and field named).
    #[error(transparent)]
    Load(#[from] netpol_observe_agent::inventory::InventoryError),
    /// A policy is not a valid `networking.k8s.io/v1` NetworkPolicy (the policy engine's
    /// validation, naming the policy and field).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A field of a policy is invalid.
    #[error("NetworkPolicy {policy}: {field}: {message}")]
    Invalid {
        /// `namespace/name`.
        policy: String,
        /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads every NetworkPolicy in `path` (a YAML file or a directory of `.yaml`/`.yml` files;
/// multi-document files and `List`s accepted). Other kinds are an error naming the document.
pub fn load_policies(path: &Path) -> Result<Vec<NetworkPolicy>, EnforceError> {
    // The same reader as `verify --policies`: a file or a directory of YAML/JSON, `List`s and
    // multi-document streams; other objects the inventory knows (a Namespace kept beside the
    // policies…) are accepted and ignored, unknown kinds are errors naming file and object.
    let draft = netpol_observe_agent::inventory::Inventory::from_path(path)?;
    Ok(draft.network_policies)
}

/// Whether `labels` match `selector`, by the policy engine's
/// [`label_selector_matches`](crate::policy::label_selector_matches) (Kubernetes semantics).
/// [`compile`] validates every policy with the engine first, so an invalid selector never
/// gets here; it would match nothing.
fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    crate::policy::label_selector_matches(selector, labels).unwrap_or(false)
}

fn name_of(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

use crate::policy::policy_types;

fn selects(model: &LabModel, p: &NetworkPolicy, pod: &PodModel) -> bool {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let selector = p.spec.as_ref().and_then(|s| s.pod_selector.as_ref());
    pod.namespace == ns
        && selector.is_none_or(|s| label_selector_matches(s, &pod.labels))
        && model.namespaces.iter().any(|n| n.name == ns)
}

/// Peers of a rule: any, or pods and CIDRs (with exceptions).
enum Peers {
    Any,
    Some {
        pods: Vec<usize>,
        cidrs: Vec<(Ipv4Net, Vec<Ipv4Net>)>,
    },
}

fn parse_net(policy: &str, field: &str, text: &str) -> Result<Option<Ipv4Net>, EnforceError> {
    match text.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(n)) => Ok(Some(n.trunc())),
        Ok(ipnet::IpNet::V6(_)) => Ok(None), // the lab is IPv4: an IPv6 block matches nothing here
        Err(e) => Err(EnforceError::Invalid {
            policy: policy.into(),
            field: field.into(),
            message: format!("`{text}` is not a CIDR: {e}"),
        }),
    }
}

fn peers(
    model: &LabModel,
    policy: &NetworkPolicy,
    list: Option<&Vec<NetworkPolicyPeer>>,
    field: &str,
) -> Result<Peers, EnforceError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(Peers::Any);
    };
    let pname = name_of(policy);
    let policy_ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    let mut pods = Vec::new();
    let mut cidrs = Vec::new();
    for (i, peer) in list.iter().enumerate() {
        if let Some(block) = &peer.ip_block {
            let f = format!("{field}[{i}].ipBlock");
            let Some(cidr) = parse_net(&pname, &format!("{f}.cidr"), &block.cidr)? else {
                continue;
            };
            let mut except = Vec::new();
            for (k, e) in block.except.iter().flatten().enumerate() {
                if let Some(n) = parse_net(&pname, &format!("{f}.except[{k}]"), e)? {
                    except.push(n);
                }
            }
            cidrs.push((cidr, except));
            continue;
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return Err(EnforceError::Invalid {
                policy: pname,
                field: format!("{field}[{i}]"),
                message: "a peer needs podSelector, namespaceSelector or ipBlock".into(),
            });
        }
        for (pi, pod) in model.pods.iter().enumerate() {
            let ns_ok = match &peer.namespace_selector {
                Some(sel) => label_selector_matches(sel, &model.namespace_labels(&pod.namespace)),
                None => pod.namespace == policy_ns,
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| label_selector_matches(sel, &pod.labels));
            if ns_ok && pod_ok && !pods.contains(&pi) {
                pods.push(pi);
            }
        }
    }
    Ok(Peers::Some { pods, cidrs })
}

/// One port item: protocol and port (none = all ports of the protocol).
enum PortItem {
    All(Protocol),
    Range(Protocol, u16, u16),
    Named(Protocol, String),
}

fn port_items(
    policy: &NetworkPolicy,
    list: Option<&Vec<NetworkPolicyPort>>,
    field: &str,
) -> Result<Option<Vec<PortItem>>, EnforceError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let invalid = |i: usize, message: String| EnforceError::Invalid {
        policy: name_of(policy),
        field: format!("{field}[{i}]"),
        message,
    };
    let mut items = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Err(invalid(i, format!("unknown protocol `{other}`"))),
        };
        items.push(match &p.port {
            None => PortItem::All(proto),
            Some(IntOrString::Int(n)) => {
                let start = u16::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(i, format!("port {n} out of range")))?;
                let end = match p.end_port {
                    Some(e) => u16::try_from(e)
                        .ok()
                        .filter(|e| *e >= start)
                        .ok_or_else(|| invalid(i, format!("endPort {e} below port {start}")))?,
                    None => start,
                };
                PortItem::Range(proto, start, end)
            }
            Some(IntOrString::String(name)) => PortItem::Named(proto, name.clone()),
        });
    }
    Ok(Some(items))
}

fn proto_expr(proto: Protocol) -> &'static str {
    match proto {
        Protocol::Udp => "meta l4proto udp",
        Protocol::Sctp => "meta l4proto sctp",
        _ => "meta l4proto tcp",
    }
}

fn range_expr(proto: Protocol, a: u16, b: u16) -> String {
    if a == b {
        format!("{} th dport {a}", proto_expr(proto))
    } else {
        format!("{} th dport {a}-{b}", proto_expr(proto))
    }
}

fn set(ips: &[Ipv4Addr]) -> String {
    let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

/// Address matches for peers in direction `dir` (`saddr`/`daddr`); empty when nothing matches.
fn peer_exprs(model: &LabModel, peers: &Peers, dir: &str) -> Vec<String> {
    match peers {
        Peers::Any => vec![String::new()],
        Peers::Some { pods, cidrs } => {
            let mut out = Vec::new();
            if !pods.is_empty() {
                let ips: Vec<Ipv4Addr> = pods.iter().map(|&p| model.pods[p].ip).collect();
                out.push(format!("ip {dir} {}", set(&ips)));
            }
            for (cidr, except) in cidrs {
                let mut e = format!("ip {dir} {cidr}");
                if !except.is_empty() {
                    let ex: Vec<String> = except.iter().map(Ipv4Net::to_string).collect();
                    let _ = write!(e, " ip {dir} != {{ {} }}", ex.join(", "));
                }
                out.push(e);
            }
            out
        }
    }
}

fn rule(parts: &[&str], verdict: &str, comment: &str) -> String {
    let mut line = String::from("    ");
    for p in parts.iter().filter(|p| !p.is_empty()) {
        line.push_str(p);
        line.push(' ');
    }
    format!("{line}{verdict} comment \"{comment}\"\n")
}

fn ingress_chain(
    model: &LabModel,
    pod: &PodModel,
    policies: &[&NetworkPolicy],
) -> Result<String, EnforceError> {
    let mut body = String::new();
    for p in policies {
        let pname = name_of(p);
        for (ri, r) in p
            .spec
            .iter()
            .flat_map(|s| s.ingress.iter().flatten())
            .enumerate()
        {
            let field = format!("spec.ingress[{ri}]");
            let from = peers(model, p, r.from.as_ref(), &format!("{field}.from"))?;
            let srcs = peer_exprs(model, &from, "saddr");
            let ports: Vec<String> =
                match port_items(p, r.ports.as_ref(), &format!("{field}.ports"))? {
                    None => vec![String::new()],
                    Some(items) => items
                        .iter()
                        .filter_map(|item| match item {
                            PortItem::All(proto) => Some(proto_expr(*proto).to_string()),
                            PortItem::Range(proto, a, b) => Some(range_expr(*proto, *a, *b)),
                            PortItem::Named(proto, name) => pod
                                .named_port(name, *proto)
                                .map(|n| range_expr(*proto, n, n)),
                        })
                        .collect(),
                };
            for s in &srcs {
                for port in &ports {
                    body.push_str(&rule(&[s, port], "accept", &pname));
                }
            }
        }
    }
    Ok(body)
}

fn egress_chain(model: &LabModel, policies: &[&NetworkPolicy]) -> Result<String, EnforceError> {
    let mut body = String::new();
    for p in policies {
        let pname = name_of(p);
        for (ri, r) in p
            .spec
            .iter()
            .flat_map(|s| s.egress.iter().flatten())
            .enumerate()
        {
            let field = format!("spec.egress[{ri}]");
            let to = peers(model, p, r.to.as_ref(), &format!("{field}.to"))?;
            let dsts = peer_exprs(model, &to, "daddr");
            let Some(items) = port_items(p, r.ports.as_ref(), &format!("{field}.ports"))? else {
                for d in &dsts {
                    body.push_str(&rule(&[d], "return", &pname));
                }
                continue;
            };
            for item in &items {
                match item {
                    PortItem::All(proto) => {
                        for d in &dsts {
                            body.push_str(&rule(&[d, proto_expr(*proto)], "return", &pname));
                        }
                    }
                    PortItem::Range(proto, a, b) => {
                        for d in &dsts {
                            body.push_str(&rule(
                                &[d, &range_expr(*proto, *a, *b)],
                                "return",
                                &pname,
                            ));
                        }
                    }
                    PortItem::Named(proto, name) => {
                        // Resolved on each destination pod; ipBlocks have no named ports.
                        let candidates: Vec<usize> = match &to {
                            Peers::Any => (0..model.pods.len()).collect(),
                            Peers::Some { pods, .. } => pods.clone(),
                        };
                        let mut by_port: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
                        for c in candidates {
                            if let Some(n) = model.pods[c].named_port(name, *proto) {
                                by_port.entry(n).or_default().push(model.pods[c].ip);
                            }
                        }
                        for (n, ips) in by_port {
                            let d = format!("ip daddr {}", set(&ips));
                            body.push_str(&rule(
                                &[&d, &range_expr(*proto, n, n)],
                                "return",
                                &pname,
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(body)
}

/// Compiles `policies` into one nftables script per node (in [`LabModel::nodes`] order), each
/// creating [`TABLE`] with the rules of that node's pods: a node enforces the egress of its
/// pods and the ingress of its pods, as a CNI does, so a packet is dropped on the node of the
/// pod whose side denies it. A node with `enforce: false` gets an empty table.
pub fn compile(model: &LabModel, policies: &[NetworkPolicy]) -> Result<Vec<String>, EnforceError> {
    for p in policies {
        crate::policy::validate(p)?;
    }
    (0..model.nodes.len())
        .map(|node| compile_node(model, policies, node))
        .collect()
}

fn compile_node(
    model: &LabModel,
    policies: &[NetworkPolicy],
    node: usize,
) -> Result<String, EnforceError> {
    if !model.nodes[node].enforce {
        // A node whose CNI does not enforce NetworkPolicy (scenario `enforce: false`).
        return Ok(format!(
            "table inet {TABLE} {{\n  comment \"node {} does not enforce NetworkPolicy\"\n}}\n",
            model.nodes[node].name
        ));
    }
    let mut chains = String::new();
    let mut egress_map = Vec::new();
    let mut ingress_map = Vec::new();
    for (i, pod) in model.pods.iter().enumerate() {
        if pod.node != node {
            continue;
        }
        let selecting: Vec<&NetworkPolicy> =
            policies.iter().filter(|p| selects(model, p, pod)).collect();
        let ingress: Vec<&NetworkPolicy> = selecting
            .iter()
            .copied()
            .filter(|p| policy_types(p).0)
            .collect();
        let egress: Vec<&NetworkPolicy> = selecting
            .iter()
            .copied()
            .filter(|p| policy_types(p).1)
            .collect();
        let who = format!("{}/{}", pod.namespace, pod.name);
        if !ingress.is_empty() {
            // A pod reaching itself through a Service (hairpin) is self-traffic: always
            // allowed, as the policy engine has it.
            let body = format!(
                "    ip saddr {} accept comment \"self\"\n{}",
                pod.ip,
                ingress_chain(model, pod, &ingress)?
            );
            let _ = write!(
                chains,
                "  chain pod_in_{i} {{\n{body}    drop comment \"ingress isolated: {who}\"\n  }}\n"
            );
            ingress_map.push(format!("{} : jump pod_in_{i}", pod.ip));
        }
        if !egress.is_empty() {
            let body = format!(
                "    ip daddr {} return comment \"self\"\n{}",
                pod.ip,
                egress_chain(model, &egress)?
            );
            let _ = write!(
                chains,
                "  chain pod_eg_{i} {{\n{body}    drop comment \"egress isolated: {who}\"\n  }}\n"
            );
            egress_map.push(format!("{} : jump pod_eg_{i}", pod.ip));
        }
    }
    let mut forward = String::from(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n",
    );
    if !egress_map.is_empty() {
        let _ = writeln!(forward, "    ip saddr vmap {{ {} }}", egress_map.join(", "));
    }
    if !ingress_map.is_empty() {
        let _ = writeln!(
            forward,
            "    ip daddr vmap {{ {} }}",
            ingress_map.join(", ")
        );
    }
    forward.push_str("  }\n");
    Ok(format!("table inet {TABLE} {{\n{chains}{forward}}}\n"))
}

/// Loads the compiled `scripts` (from [`compile`]) into the lab's nodes, replacing earlier
/// policies.
pub fn apply(topo: &Topology, scripts: &[String]) -> Result<(), NetnsError> {
    let _ = remove(topo);
    for (node, script) in scripts.iter().enumerate() {
        netns::nft(topo.node_netns_of(node), script)?;
    }
    Ok(())
}

/// Removes the compiled policies from the lab's nodes.
pub fn remove(topo: &Topology) -> Result<(), NetnsError> {
    let mut result = Ok(());
    for node in topo.node_namespaces() {
        if let Err(e) = netns::nft(node, &format!("delete table inet {TABLE}\n")) {
            result = Err(e);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    fn model() -> LabModel {
        let text = "name: t
namespaces: [{name: a, labels: {team: x}}, {name: b}]
workloads:
  - {namespace: a, name: web, labels: {app: web}, ports: [{name: http, port: 8080}]}
  - {namespace: a, name: api, labels: {app: api}, ports: [{name: http, port: 9000}]}
  - {namespace: b, name: cli, labels: {app: cli}}
";
        let s = parse(Path::new("t"), text).unwrap();
        LabModel::build(Path::new("t"), text, &s).unwrap()
    }

    fn policies(yaml: &str) -> Vec<NetworkPolicy> {
        crate::yaml::documents(yaml)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect()
    }

    #[test]
    fn selectors_are_the_engines_and_invalid_ones_are_rejected() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let sel: LabelSelector = crate::yaml::from_str(
            "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: DoesNotExist}, {key: app, operator: In, values: [web, api]}]}",
        )
        .unwrap();
        assert!(label_selector_matches(&sel, &labels));
        let sel: LabelSelector = crate::yaml::from_str(
            "{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}",
        )
        .unwrap();
        assert!(!label_selector_matches(&sel, &labels));
        assert!(label_selector_matches(&LabelSelector::default(), &labels));
        let bad = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: a}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Bogus}]}
",
        );
        let err = compile(&model(), &bad).unwrap_err().to_string();
        assert!(err.contains("a/bad") && err.contains("Bogus"), "{err}");
    }

    #[test]
    fn named_ports_resolve_per_destination_and_and_peers() {
        let m = model();
        let p = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: cli}}}]
    ports: [{port: http}]
  egress:
  - ports: [{port: http}]
",
        );
        let script = compile(&m, &p).unwrap().remove(0);
        // web (10.244.0.11) and api (10.244.0.12) resolve `http` differently.
        assert!(
            script.contains("ip saddr { 10.244.0.13 } meta l4proto tcp th dport 8080 accept"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr { 10.244.0.13 } meta l4proto tcp th dport 9000 accept"),
            "{script}"
        );
        assert!(
            script.contains("ip daddr { 10.244.0.11 } meta l4proto tcp th dport 8080 return"),
            "{script}"
        );
        assert!(
            script.contains("ip daddr { 10.244.0.12 } meta l4proto tcp th dport 9000 return"),
            "{script}"
        );
        // Namespace b and kube-system are not isolated.
        assert!(!script.contains("10.244.0.13 : jump"), "{script}");
        assert!(!script.contains("10.244.0.10 : jump"), "{script}");
        assert!(script.contains("10.244.0.11 : jump pod_in_1"), "{script}");
    }

    #[test]
    fn bad_cidr_names_policy_and_field() {
        let m = model();
        let p = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/33}}]
",
        );
        let err = compile(&m, &p).unwrap_err().to_string();
        // The policy engine's validation names the policy and the field.
        assert!(
            err.starts_with("NetworkPolicy a/p: field spec.ingress[0].from[1].ipBlock.cidr:"),
            "{err}"
        );
    }

    #[test]
    fn load_accepts_what_verify_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        // A Namespace beside the policies (issue 20): accepted, as by `verify --policies`.
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n").unwrap();
        assert_eq!(load_policies(dir.path()).unwrap().len(), 1);
        assert_eq!(load_policies(&f).unwrap().len(), 1);
        // An unknown kind is an error naming the file and the object.
        std::fs::write(&f, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n").unwrap();
        let err = load_policies(&f).unwrap_err().to_string();
        assert!(err.contains("p.yaml") && err.contains("Gadget"), "{err}");
    }
}
