//! NetworkPolicies (`networking.k8s.io/v1`, k8s-openapi types) enforced by nftables rules on
//! the lab's nodes, in their own table [`TABLE`] (removal is one `nft delete table`).
//!
//! The semantics are the policy engine's, not this module's: the policies are compiled by
//! [`PolicyEngine`] against the lab's inventory, and its [`Plan`] (per pod and direction:
//! isolated or not, the allowing rules with their peer pods, ipBlocks and ports, named ports
//! already resolved) is only written out in nftables syntax here:
//! - an isolated direction of a pod is a chain (`pod_in_<i>`, `pod_eg_<i>`) of one rule per
//!   (peer match, port match) of each allowing rule, then `drop`; peer pods are a set of their
//!   addresses, an ipBlock its CIDR minus its excepts, ports a protocol and a port range;
//! - a connection needs the egress of its source (if isolated) AND the ingress of its
//!   destination (if isolated): egress rules `return` to the forward chain, which then jumps
//!   to the destination's ingress chain;
//! - a pod reaching itself (through a Service: hairpin) is always allowed, as the engine has it;
//! - stateful: `ct state established,related accept` first, so replies always pass;
//! - traffic to and from the node is never filtered (it does not cross the forward hook);
//! - the chain sits on the forward hook, after the Service DNAT, so Service traffic is judged on
//!   the backend pod and target port, as Kubernetes does.
//!
//! Denied packets are dropped (`drop`, the kernel's `NETFILTER_DROP`), never rejected. Rules
//! carry the policy's name as their comment. ClusterNetworkPolicies are not enforced.

use std::{
    fmt::Write,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    model::LabModel,
    netns::{self, NetnsError},
    topology::Topology,
};
use crate::{
    flow::Protocol,
    policy::{
        Plan, PolicyEngine,
        plan::{Direction, PeerPlan, PortPlan, RulePlan},
    },
};

/// The nftables table holding the compiled policies (family `inet`).
pub const TABLE: &str = "npo_lab_policy";

/// Policies that cannot be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// A file or directory cannot be read.
    #[error("cannot read {path}")]
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
    /// The lab's objects cannot be written as an inventory.
    #[error("the lab's inventory")]
    Inventory(#[from] crate::inventory::InventoryError),
    /// The engine has ClusterNetworkPolicies, which the lab does not enforce (its plan does
    /// not describe them; [`compile`] compiles NetworkPolicies only).
    #[error("ClusterNetworkPolicies are not enforced by the lab")]
    ClusterPolicies,
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

/// The lab's view of the plan's pods: each plan pod's model pod (by address).
struct Pods<'a> {
    model: &'a LabModel,
    of_plan: Vec<Option<usize>>,
}

impl Pods<'_> {
    /// The addresses of plan pods `pods`, in model order.
    fn ips(&self, pods: &[usize]) -> Vec<Ipv4Addr> {
        let mut model: Vec<usize> = pods
            .iter()
            .filter_map(|p| self.of_plan.get(*p).copied().flatten())
            .collect();
        model.sort_unstable();
        model.dedup();
        model.iter().map(|m| self.model.pods[*m].ip).collect()
    }
}

/// The lab is IPv4: an IPv6 block matches nothing here.
fn v4(net: &IpNet) -> Option<IpNet> {
    matches!(net, IpNet::V4(_)).then_some(*net)
}

/// Address matches for a rule's peers in direction `dir` (`saddr`/`daddr`); empty when
/// nothing matches.
fn peer_exprs(pods: &Pods<'_>, peers: &PeerPlan, dir: &str) -> Vec<String> {
    match peers {
        PeerPlan::Any => vec![String::new()],
        PeerPlan::Listed {
            pods: listed,
            blocks,
        } => {
            let mut out = Vec::new();
            let ips = pods.ips(listed);
            if !ips.is_empty() {
                out.push(format!("ip {dir} {}", set(&ips)));
            }
            for block in blocks {
                let Some(cidr) = v4(&block.cidr) else {
                    continue;
                };
                let mut e = format!("ip {dir} {cidr}");
                let except: Vec<String> = block
                    .except
                    .iter()
                    .filter_map(v4)
                    .map(|n| n.to_string())
                    .collect();
                if !except.is_empty() {
                    let _ = write!(e, " ip {dir} != {{ {} }}", except.join(", "));
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

/// The nftables rules of one allowing rule of an ingress (`saddr`, `accept`) or egress
/// (`daddr`, `return`) chain. A named port on egress is matched with the destination pods
/// that resolve it to that number (the plan's [`PortPlan::Named`]).
fn rule_lines(pods: &Pods<'_>, r: &RulePlan, direction: Direction) -> String {
    let (dir, verdict) = match direction {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    let peers = peer_exprs(pods, &r.peers, dir);
    let mut body = String::new();
    let Some(items) = &r.ports else {
        for p in &peers {
            body.push_str(&rule(&[p], verdict, &r.policy));
        }
        return body;
    };
    let simple = |item: &PortPlan| match item {
        PortPlan::Protocol(proto) => Some(proto_expr(*proto).to_string()),
        PortPlan::Range {
            protocol,
            start,
            end,
        } => Some(range_expr(*protocol, *start, *end)),
        PortPlan::Named { .. } => None,
    };
    if direction == Direction::Ingress {
        // Named ports are resolved on the pod itself: the plan gives them as ranges.
        let ports: Vec<String> = items.iter().filter_map(simple).collect();
        for p in &peers {
            for port in &ports {
                body.push_str(&rule(&[p, port], verdict, &r.policy));
            }
        }
        return body;
    }
    for item in items {
        match (item, simple(item)) {
            (_, Some(port)) => {
                for p in &peers {
                    body.push_str(&rule(&[p, &port], verdict, &r.policy));
                }
            }
            (
                PortPlan::Named {
                    protocol, ports, ..
                },
                None,
            ) => {
                for (n, dst) in ports {
                    let ips = pods.ips(dst);
                    if ips.is_empty() {
                        continue;
                    }
                    let d = format!("ip daddr {}", set(&ips));
                    body.push_str(&rule(
                        &[&d, &range_expr(*protocol, *n, *n)],
                        verdict,
                        &r.policy,
                    ));
                }
            }
            _ => {}
        }
    }
    body
}

/// Compiles `policies` into one nftables script per node (in [`LabModel::nodes`] order), each
/// creating [`TABLE`] with the rules of that node's pods: a node enforces the egress of its
/// pods and the ingress of its pods, as a CNI does, so a packet is dropped on the node of the
/// pod whose side denies it. A node with `enforce: false` gets an empty table. The policies are
/// compiled by the policy engine against the lab's inventory ([`crate::inventory`]), which
/// validates them.
pub fn compile(model: &LabModel, policies: &[NetworkPolicy]) -> Result<Vec<String>, EnforceError> {
    let text = crate::inventory::to_yaml(model)?;
    let inventory =
        netpol_observe_agent::inventory::Inventory::from_yaml_str(&text, "the lab's inventory")?;
    let engine = PolicyEngine::compile(policies, &inventory)?;
    let plan = engine.plan().ok_or(EnforceError::ClusterPolicies)?;
    let of_plan = (0..plan.pod_count())
        .map(|i| {
            let pod = plan.pod(i)?;
            pod.ips.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => model.pods.iter().position(|m| m.ip == *a),
                IpAddr::V6(_) => None,
            })
        })
        .collect();
    let pods = Pods { model, of_plan };
    Ok((0..model.nodes.len())
        .map(|node| compile_node(&plan, &pods, node))
        .collect())
}

fn compile_node(plan: &Plan<'_>, pods: &Pods<'_>, node: usize) -> String {
    let model = pods.model;
    if !model.nodes[node].enforce {
        // A node whose CNI does not enforce NetworkPolicy (scenario `enforce: false`).
        return format!(
            "table inet {TABLE} {{\n  comment \"node {} does not enforce NetworkPolicy\"\n}}\n",
            model.nodes[node].name
        );
    }
    let mut chains = String::new();
    let mut egress_map = Vec::new();
    let mut ingress_map = Vec::new();
    for (i, pod) in model.pods.iter().enumerate() {
        if pod.node != node {
            continue;
        }
        let Some(p) = pods.of_plan.iter().position(|m| *m == Some(i)) else {
            continue;
        };
        let who = format!("{}/{}", pod.namespace, pod.name);
        // A pod reaching itself through a Service (hairpin) is self-traffic: always allowed,
        // as the policy engine has it.
        let sides = [
            (
                Direction::Ingress,
                "in",
                "saddr",
                "accept",
                &mut ingress_map,
            ),
            (Direction::Egress, "eg", "daddr", "return", &mut egress_map),
        ];
        for (direction, chain, own, verdict, map) in sides {
            let Some(side) = plan.side(p, direction) else {
                continue;
            };
            let mut body = format!("    ip {own} {} {verdict} comment \"self\"\n", pod.ip);
            for r in &side.rules {
                body.push_str(&rule_lines(pods, r, direction));
            }
            let what = match direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            let _ = write!(
                chains,
                "  chain pod_{chain}_{i} {{\n{body}    drop comment \"{what} isolated: {who}\"\n  }}\n"
            );
            map.push(format!("{} : jump pod_{chain}_{i}", pod.ip));
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
    format!("table inet {TABLE} {{\n{chains}{forward}}}\n")
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
        let m = model();
        let p = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: DoesNotExist}, {key: app, operator: In, values: [web, api]}]}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]
",
        );
        let script = compile(&m, &p).unwrap().remove(0);
        // web (10.244.0.11) alone is isolated; api (10.244.0.12, namespace a of team x, not
        // web) alone may reach it.
        assert!(script.contains("10.244.0.11 : jump pod_in_1"), "{script}");
        assert!(!script.contains("10.244.0.12 : jump"), "{script}");
        assert!(
            script.contains("    ip saddr { 10.244.0.12 } accept comment \"a/p\"\n"),
            "{script}"
        );
        assert_eq!(
            script.matches("accept comment \"a/p\"").count(),
            1,
            "{script}"
        );
        let bad = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: a}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Bogus}]}
",
        );
        let err = compile(&m, &bad).unwrap_err().to_string();
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
    fn ip_blocks_ranges_and_named_ports_are_the_engines() {
        let m = model();
        let p = policies(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.0.12/32]}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}, {ipBlock: {cidr: 'fd00::/8'}}]
    ports: [{port: 9000, endPort: 9100, protocol: UDP}]
",
        );
        let script = compile(&m, &p).unwrap().remove(0);
        // Only web's egress is isolated.
        assert!(
            script.contains("ip saddr vmap { 10.244.0.11 : jump pod_eg_1 }"),
            "{script}"
        );
        assert!(!script.contains("pod_in_"), "{script}");
        // A named port is the destination pod's: the pods in the block with a port `http`
        // (web, 8080; api, 9000, is excepted; cli has none), as the engine resolves it.
        assert!(
            script.contains("    ip daddr { 10.244.0.11 } meta l4proto tcp th dport 8080 return comment \"a/p\"\n"),
            "{script}"
        );
        assert!(!script.contains("10.244.0.0/16"), "{script}");
        assert!(
            script.contains("    ip daddr 192.0.2.0/24 ip daddr != { 192.0.2.128/25 } meta l4proto udp th dport 9000-9100 return comment \"a/p\"\n"),
            "{script}"
        );
        // The lab is IPv4: the IPv6 block is left out.
        assert!(!script.contains("fd00"), "{script}");
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
