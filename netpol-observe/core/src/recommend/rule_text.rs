//! A short description of a NetworkPolicy rule for people (`to app=api TCP 8080`), for the
//! rules `recommend --diff` names: NetworkPolicy rules have no names, so the report names
//! each by its index and says what it allows.

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

/// `from <peers> <ports>` of an ingress rule.
pub fn ingress(rule: &NetworkPolicyIngressRule) -> String {
    format!(
        "from {} {}",
        peers(rule.from.as_deref()),
        ports(rule.ports.as_deref())
    )
}

/// `to <peers> <ports>` of an egress rule.
pub fn egress(rule: &NetworkPolicyEgressRule) -> String {
    format!(
        "to {} {}",
        peers(rule.to.as_deref()),
        ports(rule.ports.as_deref())
    )
}

fn peers(list: Option<&[NetworkPolicyPeer]>) -> String {
    match list {
        None | Some([]) => "anywhere".to_owned(),
        Some(list) => list.iter().map(peer).collect::<Vec<_>>().join(", "),
    }
}

fn peer(p: &NetworkPolicyPeer) -> String {
    if let Some(b) = &p.ip_block {
        return match b.except.as_deref() {
            Some(ex) if !ex.is_empty() => format!("{} except {}", b.cidr, ex.join(" ")),
            _ => b.cidr.clone(),
        };
    }
    let pods = p.pod_selector.as_ref().map(selector);
    let namespaces = p.namespace_selector.as_ref().map(|s| {
        let names = s.match_labels.as_ref().and_then(|m| {
            (m.len() == 1 && s.match_expressions.as_ref().is_none_or(Vec::is_empty))
                .then(|| m.get("kubernetes.io/metadata.name"))
                .flatten()
        });
        match names {
            Some(ns) => format!("namespace {ns}"),
            None if is_empty(s) => "every namespace".to_owned(),
            None => format!("namespaces {}", selector(s)),
        }
    });
    match (namespaces, pods) {
        (Some(ns), Some(pods)) => format!("{pods} in {ns}"),
        (Some(ns), None) => format!("every pod in {ns}"),
        (None, Some(pods)) => pods,
        (None, None) => "anywhere".to_owned(),
    }
}

fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// `app=api,tier in (a b)` (`all pods` for an empty selector).
fn selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(" ");
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {} ({values})", e.key, op.to_lowercase()),
        });
    }
    if parts.is_empty() {
        "all pods".to_owned()
    } else {
        parts.join(",")
    }
}

fn ports(list: Option<&[NetworkPolicyPort]>) -> String {
    match list {
        None | Some([]) => "any port".to_owned(),
        Some(list) => list
            .iter()
            .map(|p| {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                match (&p.port, p.end_port) {
                    (None, _) => format!("{proto} any port"),
                    (Some(IntOrString::Int(a)), Some(b)) => format!("{proto} {a}-{b}"),
                    (Some(IntOrString::Int(a)), None) => format!("{proto} {a}"),
                    (Some(IntOrString::String(name)), _) => format!("{proto} {name}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> NetworkPolicyEgressRule {
        crate::yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn rules_are_described_briefly() {
        let r = rule(
            "to: [{podSelector: {matchLabels: {app: api}}}]\nports: [{port: 8080, protocol: TCP}]",
        );
        assert_eq!(egress(&r), "to app=api TCP 8080");
        let r = rule(
            "to:\n- namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n  podSelector: {matchLabels: {k8s-app: kube-dns}}\nports: [{port: 53, protocol: UDP}, {port: 53}]",
        );
        assert_eq!(
            egress(&r),
            "to k8s-app=kube-dns in namespace kube-system UDP 53, TCP 53"
        );
        let r = rule(
            "to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\nports: [{port: 443, endPort: 445}]",
        );
        assert_eq!(egress(&r), "to 0.0.0.0/0 except 10.0.0.0/8 TCP 443-445");
        assert_eq!(egress(&rule("{}")), "to anywhere any port");
        let i: NetworkPolicyIngressRule = crate::yaml::from_str(
            "from: [{namespaceSelector: {}}, {podSelector: {matchExpressions: [{key: tier, operator: In, values: [a, b]}]}}]",
        )
        .unwrap();
        assert_eq!(
            ingress(&i),
            "from every pod in every namespace, tier in (a b) any port"
        );
    }
}
