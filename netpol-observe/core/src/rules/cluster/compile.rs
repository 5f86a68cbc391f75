//! Validation of ClusterNetworkPolicies (what the CRD's schema and CEL rules check) and their
//! compiled form: selectors checked, CIDRs parsed, ports resolved to ranges, domain names to
//! patterns. Errors name the policy and the field path (`spec.egress[0].to[1].networks[0]`).

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::types::{
    Action, ClusterNetworkPolicy, EgressPeer, EgressRule, IngressRule, NamespacedPod,
    ProtocolMatch, ProtocolPort, Tier,
};
use crate::{
    flow::Protocol,
    rules::{PolicyError, selector::requirements},
};

/// At most this many rules per direction, peers per rule, protocols per rule, CIDRs or domain
/// names per peer (the CRD's `maxItems`).
const MAX_ITEMS: usize = 25;

/// Which pods a subject or a pod peer covers.
#[derive(Debug, Clone)]
pub(crate) struct PodMatch {
    /// The namespaces (empty selector: all).
    pub(crate) namespaces: LabelSelector,
    /// The pods in them (`None`: all).
    pub(crate) pods: Option<LabelSelector>,
}

/// One peer of a rule.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// Pods (never hostNetwork ones).
    Pods(PodMatch),
    /// Nodes by label: their addresses (and the hostNetwork pods on them).
    Nodes(LabelSelector),
    /// CIDRs, matched against the peer's address.
    Networks(Vec<IpNet>),
    /// Domain names, matched against the names the client resolved to the destination.
    Domains(Vec<DomainPattern>),
}

/// One entry of `protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortMatch {
    /// `protocol` to a port in `start..=end`.
    Range(Protocol, u16, u16),
    /// A named container port of the destination pod (with the flow's protocol).
    Named(String),
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) action: Action,
    /// Any of these matches.
    pub(crate) peers: Vec<Peer>,
    /// `None`: every port and protocol.
    pub(crate) ports: Option<Vec<PortMatch>>,
    /// `cnp/<name>:egress[i]`, with `:<rule name>` when the rule has one.
    pub(crate) label: String,
}

/// A validated, compiled ClusterNetworkPolicy.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCnp {
    /// `cnp/<name>`.
    pub(crate) id: String,
    pub(crate) tier: Tier,
    pub(crate) priority: i32,
    pub(crate) subject: PodMatch,
    pub(crate) ingress: Vec<Rule>,
    pub(crate) egress: Vec<Rule>,
}

/// A `domainNames` entry: an exact name, or `*.` and a suffix (one or more labels before it).
/// Lowercase, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainPattern {
    wildcard: bool,
    name: String,
}

impl DomainPattern {
    /// Parses an entry (the CRD's pattern: optional `*.`, then two or more labels of
    /// alphanumerics, `-` and `_`, optional trailing dot).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        let labels: Vec<&str> = rest.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && l.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && l.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(format!(
                "{s:?} is not a domain name (e.g. example.com, or *.example.com for its subdomains)"
            ));
        }
        Ok(DomainPattern {
            wildcard,
            name: rest.to_ascii_lowercase(),
        })
    }

    /// Whether `name` (any case, with or without a trailing dot) matches: exactly, or for
    /// `*.suffix` one or more whole labels before the suffix.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        name.len() > self.name.len() + 1
            && name.is_char_boundary(name.len() - self.name.len() - 1)
            && name[name.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
            && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
    }
}

/// Validates a ClusterNetworkPolicy as the API server would (schema and CEL rules of the
/// v0.2.0 CRD, experimental channel: `nodes` and `domainNames` allowed).
pub fn validate(policy: &ClusterNetworkPolicy) -> Result<(), PolicyError> {
    compile(policy).map(|_| ())
}

fn fail(
    policy: &ClusterNetworkPolicy,
    field: impl Into<String>,
    problem: impl Into<String>,
) -> PolicyError {
    PolicyError {
        kind: PolicyError::CLUSTER_NETWORK_POLICY,
        policy: policy.name().to_owned(),
        field: field.into(),
        problem: problem.into(),
    }
}

fn check_selector(
    policy: &ClusterNetworkPolicy,
    selector: &LabelSelector,
    field: &str,
) -> Result<(), PolicyError> {
    requirements(selector).map(|_| ()).map_err(|e| PolicyError {
        kind: PolicyError::CLUSTER_NETWORK_POLICY,
        ..e.in_policy(policy.name(), field)
    })
}

fn pod_match(
    policy: &ClusterNetworkPolicy,
    pods: &NamespacedPod,
    field: &str,
) -> Result<PodMatch, PolicyError> {
    check_selector(
        policy,
        &pods.namespace_selector,
        &format!("{field}.namespaceSelector"),
    )?;
    check_selector(policy, &pods.pod_selector, &format!("{field}.podSelector"))?;
    Ok(PodMatch {
        namespaces: pods.namespace_selector.clone(),
        pods: Some(pods.pod_selector.clone()).filter(|s| !is_empty_selector(s)),
    })
}

fn namespaces_match(
    policy: &ClusterNetworkPolicy,
    selector: &LabelSelector,
    field: &str,
) -> Result<PodMatch, PolicyError> {
    check_selector(policy, selector, field)?;
    Ok(PodMatch {
        namespaces: selector.clone(),
        pods: None,
    })
}

fn is_empty_selector(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Validates and compiles one policy.
pub(crate) fn compile(policy: &ClusterNetworkPolicy) -> Result<CompiledCnp, PolicyError> {
    let name = policy.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(fail(policy, "metadata.name", "missing"));
    }
    // A metadata.namespace is ignored, as the API server clears it on a cluster-scoped object.
    let spec = &policy.spec;
    if !(0..=1000).contains(&spec.priority) {
        return Err(fail(
            policy,
            "spec.priority",
            format!("{} is not in 0-1000", spec.priority),
        ));
    }
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(ns), None) => namespaces_match(policy, ns, "spec.subject.namespaces")?,
        (None, Some(pods)) => pod_match(policy, pods, "spec.subject.pods")?,
        _ => {
            return Err(fail(
                policy,
                "spec.subject",
                "exactly one of namespaces or pods must be set",
            ));
        }
    };
    for (dir, len) in [
        ("ingress", spec.ingress.len()),
        ("egress", spec.egress.len()),
    ] {
        if len > MAX_ITEMS {
            return Err(fail(
                policy,
                format!("spec.{dir}"),
                format!("{len} rules, at most {MAX_ITEMS} are allowed"),
            ));
        }
    }
    let id = policy.id();
    let ingress = (spec.ingress.iter().enumerate())
        .map(|(i, r)| ingress_rule(policy, &id, i, r))
        .collect::<Result<_, _>>()?;
    let egress = (spec.egress.iter().enumerate())
        .map(|(i, r)| egress_rule(policy, &id, i, r))
        .collect::<Result<_, _>>()?;
    Ok(CompiledCnp {
        id,
        tier: spec.tier,
        priority: spec.priority,
        subject,
        ingress,
        egress,
    })
}

/// Validates and compiles ingress rule `i` of `policy` (`id` names it in verdicts).
fn ingress_rule(
    policy: &ClusterNetworkPolicy,
    id: &str,
    i: usize,
    r: &IngressRule,
) -> Result<Rule, PolicyError> {
    let field = format!("spec.ingress[{i}]");
    check_rule_name(policy, r.name.as_deref(), &field)?;
    check_count(policy, r.from.len(), &format!("{field}.from"))?;
    let mut peers = Vec::new();
    for (j, p) in r.from.iter().enumerate() {
        let pf = format!("{field}.from[{j}]");
        peers.push(match (&p.namespaces, &p.pods) {
            (Some(ns), None) => {
                Peer::Pods(namespaces_match(policy, ns, &format!("{pf}.namespaces"))?)
            }
            (None, Some(pods)) => Peer::Pods(pod_match(policy, pods, &format!("{pf}.pods"))?),
            _ => {
                return Err(fail(
                    policy,
                    pf,
                    "exactly one of namespaces or pods must be set",
                ));
            }
        });
    }
    Ok(Rule {
        action: r.action,
        peers,
        ports: compile_protocols(
            policy,
            r.protocols.as_deref(),
            &format!("{field}.protocols"),
        )?,
        label: rule_label(id, "ingress", i, r.name.as_deref()),
    })
}

/// Validates and compiles egress rule `i` of `policy`: a named port only towards pods.
fn egress_rule(
    policy: &ClusterNetworkPolicy,
    id: &str,
    i: usize,
    r: &EgressRule,
) -> Result<Rule, PolicyError> {
    let field = format!("spec.egress[{i}]");
    check_rule_name(policy, r.name.as_deref(), &field)?;
    check_count(policy, r.to.len(), &format!("{field}.to"))?;
    let mut peers = Vec::new();
    for (j, p) in r.to.iter().enumerate() {
        peers.push(egress_peer(
            policy,
            p,
            r.action,
            &format!("{field}.to[{j}]"),
        )?);
    }
    let ports = compile_protocols(
        policy,
        r.protocols.as_deref(),
        &format!("{field}.protocols"),
    )?;
    let named = ports
        .iter()
        .flatten()
        .any(|p| matches!(p, PortMatch::Named(_)));
    if named && let Some(j) = peers.iter().position(|p| !matches!(p, Peer::Pods(_))) {
        return Err(fail(
            policy,
            format!("{field}.to[{j}]"),
            "networks, nodes and domainNames peers have no named ports: a rule with one cannot use destinationNamedPort",
        ));
    }
    Ok(Rule {
        action: r.action,
        peers,
        ports,
        label: rule_label(id, "egress", i, r.name.as_deref()),
    })
}

fn rule_label(id: &str, dir: &str, i: usize, name: Option<&str>) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{id}:{dir}[{i}]:{n}"),
        None => format!("{id}:{dir}[{i}]"),
    }
}

fn check_rule_name(
    policy: &ClusterNetworkPolicy,
    name: Option<&str>,
    field: &str,
) -> Result<(), PolicyError> {
    match name {
        Some(n) if n.chars().count() > 100 => Err(fail(
            policy,
            format!("{field}.name"),
            "longer than 100 characters",
        )),
        _ => Ok(()),
    }
}

fn check_count(policy: &ClusterNetworkPolicy, len: usize, field: &str) -> Result<(), PolicyError> {
    if len == 0 {
        return Err(fail(policy, field, "must have at least one item"));
    }
    if len > MAX_ITEMS {
        return Err(fail(
            policy,
            field,
            format!("{len} items, at most {MAX_ITEMS} are allowed"),
        ));
    }
    Ok(())
}

fn egress_peer(
    policy: &ClusterNetworkPolicy,
    p: &EgressPeer,
    action: Action,
    pf: &str,
) -> Result<Peer, PolicyError> {
    let set = usize::from(p.namespaces.is_some())
        + usize::from(p.pods.is_some())
        + usize::from(p.nodes.is_some())
        + usize::from(p.networks.is_some())
        + usize::from(p.domain_names.is_some());
    if set != 1 {
        return Err(fail(
            policy,
            pf,
            "exactly one of namespaces, pods, nodes, networks or domainNames must be set",
        ));
    }
    if let Some(ns) = &p.namespaces {
        return Ok(Peer::Pods(namespaces_match(
            policy,
            ns,
            &format!("{pf}.namespaces"),
        )?));
    }
    if let Some(pods) = &p.pods {
        return Ok(Peer::Pods(pod_match(policy, pods, &format!("{pf}.pods"))?));
    }
    if let Some(nodes) = &p.nodes {
        check_selector(policy, nodes, &format!("{pf}.nodes"))?;
        return Ok(Peer::Nodes(nodes.clone()));
    }
    if let Some(networks) = &p.networks {
        check_count(policy, networks.len(), &format!("{pf}.networks"))?;
        let mut out = Vec::new();
        for (k, n) in networks.iter().enumerate() {
            let net = n.parse::<IpNet>().map_err(|_| {
                fail(
                    policy,
                    format!("{pf}.networks[{k}]"),
                    format!("{n:?} is not a CIDR (address/prefix, e.g. 10.0.0.0/8 or fd00::/8)"),
                )
            })?;
            out.push(net.trunc());
        }
        return Ok(Peer::Networks(out));
    }
    let names = p.domain_names.as_deref().unwrap_or_default();
    check_count(policy, names.len(), &format!("{pf}.domainNames"))?;
    if action != Action::Accept {
        return Err(fail(
            policy,
            format!("{pf}.domainNames"),
            format!(
                "domainNames are only supported in Accept rules (this rule's action is {})",
                action.as_str()
            ),
        ));
    }
    let mut out = Vec::new();
    for (k, n) in names.iter().enumerate() {
        out.push(
            DomainPattern::parse(n)
                .map_err(|e| fail(policy, format!("{pf}.domainNames[{k}]"), e))?,
        );
    }
    Ok(Peer::Domains(out))
}

fn compile_protocols(
    policy: &ClusterNetworkPolicy,
    protocols: Option<&[ProtocolMatch]>,
    field: &str,
) -> Result<Option<Vec<PortMatch>>, PolicyError> {
    let Some(protocols) = protocols else {
        return Ok(None);
    };
    check_count(policy, protocols.len(), field)?;
    let mut out = Vec::new();
    for (i, p) in protocols.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let set = usize::from(p.tcp.is_some())
            + usize::from(p.udp.is_some())
            + usize::from(p.sctp.is_some())
            + usize::from(p.destination_named_port.is_some());
        if set != 1 {
            return Err(fail(
                policy,
                f,
                "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
            ));
        }
        let port =
            |proto: Protocol, pp: &ProtocolPort, name: &str| -> Result<PortMatch, PolicyError> {
                let pf = format!("{f}.{name}.destinationPort");
                let Some(d) = &pp.destination_port else {
                    return Err(fail(policy, pf, "missing"));
                };
                let number = |n: i32, nf: String| {
                    u16::try_from(n)
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| fail(policy, nf, format!("port {n} is not in 1-65535")))
                };
                match (d.number, d.range) {
                    (Some(n), None) => {
                        let n = number(n, format!("{pf}.number"))?;
                        Ok(PortMatch::Range(proto, n, n))
                    }
                    (None, Some(r)) => {
                        let start = number(r.start, format!("{pf}.range.start"))?;
                        let end = number(r.end, format!("{pf}.range.end"))?;
                        if start >= end {
                            return Err(fail(
                                policy,
                                format!("{pf}.range"),
                                format!("start {start} must be less than end {end}"),
                            ));
                        }
                        Ok(PortMatch::Range(proto, start, end))
                    }
                    _ => Err(fail(
                        policy,
                        pf,
                        "exactly one of number or range must be set",
                    )),
                }
            };
        let m = if let Some(pp) = &p.tcp {
            port(Protocol::Tcp, pp, "tcp")?
        } else if let Some(pp) = &p.udp {
            port(Protocol::Udp, pp, "udp")?
        } else if let Some(pp) = &p.sctp {
            port(Protocol::Sctp, pp, "sctp")?
        } else if let Some(n) = &p.destination_named_port {
            crate::names::check(crate::names::NameKind::PortName, n)
                .map_err(|e| fail(policy, format!("{f}.destinationNamedPort"), e.to_string()))?;
            PortMatch::Named(n.clone())
        } else {
            continue;
        };
        out.push(m);
    }
    Ok(Some(out))
}

/// Whether a rule's `protocols` admit a flow to `port`/`protocol` at a destination whose named
/// ports `named` resolves.
pub(crate) fn ports_match(
    ports: Option<&[PortMatch]>,
    port: Option<u16>,
    protocol: Protocol,
    named: impl Fn(&str) -> Option<u16>,
) -> bool {
    let Some(ports) = ports else {
        return true;
    };
    let Some(port) = port else {
        return false;
    };
    ports.iter().any(|p| match p {
        PortMatch::Range(proto, start, end) => {
            *proto == protocol && (*start..=*end).contains(&port)
        }
        PortMatch::Named(name) => named(name) == Some(port),
    })
}
