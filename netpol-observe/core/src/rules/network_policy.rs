//! Validation and compilation of one NetworkPolicy into rules the engine evaluates quickly.
//! Errors name the policy and the field path (`spec.ingress[0].from[1].ipBlock.cidr`).

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    PolicyError,
    selector::{CompiledSelector, Interner},
};
use crate::flow::Protocol;

/// Which namespaces a pod peer covers.
#[derive(Debug, Clone)]
pub(crate) enum NsMatch {
    /// The policy's own namespace (no `namespaceSelector`).
    Own,
    /// Namespaces selected by a `namespaceSelector`; `hits` is filled per namespace id by the
    /// engine.
    Selector {
        selector: CompiledSelector,
        hits: Vec<bool>,
    },
}

/// One peer of a rule.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// Pods: `podSelector` (None = all pods) in namespaces; `set` indexes the engine's
    /// pre-computed set of matching pod classes.
    Pods {
        namespaces: NsMatch,
        pods: Option<CompiledSelector>,
        set: u32,
    },
    /// An `ipBlock`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// The port part of a port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortSpec {
    /// Every port of the protocol.
    Any,
    /// `port`..=`endPort` (a single port when no `endPort`).
    Range(u16, u16),
    /// A named container port of the destination pod.
    Named(String),
}

/// One entry of `ports`.
#[derive(Debug, Clone)]
pub(crate) struct PortMatch {
    pub(crate) protocol: Protocol,
    pub(crate) port: PortSpec,
}

/// One ingress or egress rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// `None`: every peer (the field was omitted or empty).
    pub(crate) peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub(crate) ports: Option<Vec<PortMatch>>,
    /// `ns/name:ingress[i]`.
    pub(crate) label: String,
}

/// A validated, compiled policy.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    /// `ns/name`.
    pub(crate) id: String,
    /// The policy's namespace.
    pub(crate) namespace: String,
    /// Which pods of the namespace it selects.
    pub(crate) pod_selector: CompiledSelector,
    /// `Some` when the policy has the Ingress type: the rules (empty = deny all ingress).
    pub(crate) ingress: Option<Vec<Rule>>,
    /// `Some` when the policy has the Egress type.
    pub(crate) egress: Option<Vec<Rule>>,
}

/// `ns/name` of a policy (a policy without namespace is in `default`, as `kubectl apply`
/// would put it).
pub fn policy_id(policy: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// The policy types in force: `policyTypes` when given, else Ingress always and Egress when
/// the policy has egress rules (the API server's defaulting). Returns `(ingress, egress)`.
pub fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = policy.spec.as_ref() else {
        return (true, false);
    };
    match &spec.policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// Validates a policy against the `networking.k8s.io/v1` rules the API server enforces.
pub fn validate(policy: &NetworkPolicy) -> Result<(), PolicyError> {
    compile_policy(policy, &mut Interner::default()).map(|_| ())
}

/// Compiles a policy (validating it).
pub(crate) fn compile_policy(
    policy: &NetworkPolicy,
    interner: &mut Interner,
) -> Result<CompiledPolicy, PolicyError> {
    let id = policy_id(policy);
    let fail = |field: String, problem: String| PolicyError {
        kind: PolicyError::NETWORK_POLICY,
        policy: id.clone(),
        field,
        problem,
    };
    if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(fail("metadata.name".into(), "missing".into()));
    }
    let Some(spec) = policy.spec.as_ref() else {
        return Err(fail("spec".into(), "missing".into()));
    };
    let pod_selector =
        CompiledSelector::compile(&spec.pod_selector.clone().unwrap_or_default(), interner)
            .map_err(|e| e.in_policy(&id, "spec.podSelector"))?;
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(fail(
                format!("spec.policyTypes[{i}]"),
                format!("unknown policy type {t:?} (expected Ingress or Egress)"),
            ));
        }
    }
    let (has_ingress, has_egress) = policy_types(policy);
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: compile_peers(r.from.as_deref(), &id, &format!("{field}.from"), interner)?,
            ports: compile_ports(r.ports.as_deref(), &id, &format!("{field}.ports"))?,
            label: format!("{id}:ingress[{i}]"),
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: compile_peers(r.to.as_deref(), &id, &format!("{field}.to"), interner)?,
            ports: compile_ports(r.ports.as_deref(), &id, &format!("{field}.ports"))?,
            label: format!("{id}:egress[{i}]"),
        });
    }
    Ok(CompiledPolicy {
        namespace: policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        id,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    })
}

fn compile_peers(
    peers: Option<&[NetworkPolicyPeer]>,
    id: &str,
    field: &str,
    interner: &mut Interner,
) -> Result<Option<Vec<Peer>>, PolicyError> {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let fail = |f: String, problem: String| PolicyError {
            kind: PolicyError::NETWORK_POLICY,
            policy: id.to_owned(),
            field: f,
            problem,
        };
        match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
            (Some(block), None, None) => {
                let cidr_field = format!("{field}.ipBlock.cidr");
                let cidr = parse_cidr(&block.cidr).map_err(|p| fail(cidr_field, p))?;
                let mut except = Vec::new();
                for (j, e) in block.except.iter().flatten().enumerate() {
                    let ef = format!("{field}.ipBlock.except[{j}]");
                    let net = parse_cidr(e).map_err(|p| fail(ef.clone(), p))?;
                    if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                        return Err(fail(
                            ef,
                            format!("{e} must be a strict subset of cidr {}", block.cidr),
                        ));
                    }
                    except.push(net);
                }
                out.push(Peer::IpBlock { cidr, except });
            }
            (Some(_), _, _) => {
                return Err(fail(
                    format!("{field}.ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
                ));
            }
            (None, None, None) => {
                return Err(fail(
                    field,
                    "a peer needs podSelector, namespaceSelector or ipBlock".into(),
                ));
            }
            (None, ns, pods) => {
                let namespaces = match ns {
                    None => NsMatch::Own,
                    Some(sel) => NsMatch::Selector {
                        selector: CompiledSelector::compile(sel, interner)
                            .map_err(|e| e.in_policy(id, &format!("{field}.namespaceSelector")))?,
                        hits: Vec::new(),
                    },
                };
                let pods = pods
                    .as_ref()
                    .map(|sel| {
                        CompiledSelector::compile(sel, interner)
                            .map_err(|e| e.in_policy(id, &format!("{field}.podSelector")))
                    })
                    .transpose()?
                    .filter(|s| !s.is_empty());
                out.push(Peer::Pods {
                    namespaces,
                    pods,
                    set: 0,
                });
            }
        }
    }
    Ok(Some(out))
}

/// Parses a CIDR as the API server does: an address with a prefix length (host bits are
/// ignored, as for legacy objects).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR (address/prefix, e.g. 10.0.0.0/24)"))
}

/// Whether `s` is a valid IANA service name (a named port): 1-15 lowercase alphanumerics and
/// `-`, at least one letter, no leading, trailing or double `-`.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn compile_ports(
    ports: Option<&[NetworkPolicyPort]>,
    id: &str,
    field: &str,
) -> Result<Option<Vec<PortMatch>>, PolicyError> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let fail = |f: &str, problem: String| PolicyError {
            kind: PolicyError::NETWORK_POLICY,
            policy: id.to_owned(),
            field: format!("{field}.{f}"),
            problem,
        };
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(fail(
                    "protocol",
                    format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
                ));
            }
        };
        let number = |n: i32, f: &str| -> Result<u16, PolicyError> {
            u16::try_from(n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| fail(f, format!("port {n} is not in 1-65535")))
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortSpec::Any,
            (None, Some(_)) => {
                return Err(fail("endPort", "endPort requires a numeric port".into()));
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = number(*n, "port")?;
                let end = match end {
                    None => start,
                    Some(e) => {
                        let e = number(e, "endPort")?;
                        if e < start {
                            return Err(fail(
                                "endPort",
                                format!("endPort {e} is less than port {start}"),
                            ));
                        }
                        e
                    }
                };
                PortSpec::Range(start, end)
            }
            (Some(IntOrString::String(s)), end) => {
                if let Ok(n) = s.parse::<i32>() {
                    return Err(fail(
                        "port",
                        format!("{s:?} is a number in a string; write it as the integer {n}"),
                    ));
                }
                if !is_port_name(s) {
                    return Err(fail(
                        "port",
                        format!(
                            "{s:?} is not a valid port name (1-15 lowercase letters, digits and '-')"
                        ),
                    ));
                }
                if end.is_some() {
                    return Err(fail("endPort", "endPort requires a numeric port".into()));
                }
                PortSpec::Named(s.clone())
            }
        };
        out.push(PortMatch { protocol, port });
    }
    Ok(Some(out))
}
