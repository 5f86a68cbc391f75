//! ClusterNetworkPolicy semantics from the API's documented behaviour (tiers, priorities,
//! actions, peers, ports, domain names), each example checked on the engine and on the
//! literal reference evaluator; validation errors; engine/reference agreement on random
//! policies.

use std::net::IpAddr;

use super::fixtures::{API, API_SVC, DNS, NODE_2, VAULT, WEB, cluster, flow};
use crate::{
    flow::{FlowRecord, Protocol},
    inventory::{Inventory, InventoryError},
    policy::{PolicyEngine, SideResult, reference::Reference, synth},
};

/// One side's outcome: result, policies, rules.
type Side = (SideResult, Vec<String>, Vec<String>);

/// Evaluates `f` with the engine and the reference (which must agree, also compactly) and
/// returns (ingress, egress).
fn judge(inv: &Inventory, f: &FlowRecord) -> (Side, Side) {
    let engine = PolicyEngine::compile_with_cluster(
        &inv.network_policies,
        &inv.cluster_network_policies,
        inv,
    )
    .unwrap();
    let reference =
        Reference::with_cluster(inv, &inv.network_policies, &inv.cluster_network_policies).unwrap();
    let v = engine.evaluate_flow(f);
    assert_eq!(v, reference.evaluate(f), "engine vs reference: {f:?}");
    let c = engine.evaluate_flow_compact(f);
    assert_eq!(
        (c.allowed, c.ingress.result, c.egress.result),
        (v.allowed, v.ingress.result, v.egress.result),
        "compact vs explained: {f:?}"
    );
    let side =
        |s: &crate::policy::SideVerdict| (s.result, s.policies.to_strings(), s.rules.to_strings());
    (side(&v.ingress), side(&v.egress))
}

fn not_isolated() -> Side {
    (SideResult::NotIsolated, vec![], vec![])
}

fn side(result: SideResult, policy: &str, rule: &str) -> Side {
    (result, vec![policy.to_owned()], vec![rule.to_owned()])
}

#[test]
fn without_cluster_policies_the_network_policies_decide() {
    let inv = cluster("");
    assert!(inv.cluster_network_policies.is_empty());
    let (ingress, egress) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(
        ingress,
        side(
            SideResult::Allowed,
            "backend/api-np",
            "backend/api-np:ingress[0]"
        )
    );
    assert_eq!(egress, not_isolated());
    let (ingress, _) = judge(&inv, &flow(WEB, API, 9100));
    assert_eq!(
        ingress,
        (
            SideResult::Denied,
            vec!["backend/api-np".to_owned()],
            vec![]
        )
    );
}

/// Admin tier: "Deny: drops the selected traffic. No further ClusterNetworkPolicy or
/// NetworkPolicy rules will be processed" — a NetworkPolicy allowing it changes nothing.
#[test]
fn admin_deny_beats_a_network_policy_allow() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: isolate-backend}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: core}}}
  ingress:
  - {name: no-web, action: Deny, from: [{namespaces: {matchLabels: {team: web}}}]}
"#,
    );
    let (ingress, egress) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(
        ingress,
        side(
            SideResult::Denied,
            "cnp/isolate-backend",
            "cnp/isolate-backend:ingress[0]:no-web"
        )
    );
    assert_eq!(egress, not_isolated());
    // Through the Service: judged at the backend, as the NetworkPolicies are.
    let (ingress, _) = judge(&inv, &flow(WEB, API_SVC, 80));
    assert_eq!(ingress.0, SideResult::Denied);
    // Another source is not matched: the NetworkPolicy decides (denied: not web).
    let (ingress, _) = judge(&inv, &flow(DNS, API, 9000));
    assert_eq!(
        ingress,
        (
            SideResult::Denied,
            vec!["backend/api-np".to_owned()],
            vec![]
        )
    );
}

/// Admin tier: "Accept: ... No further ClusterNetworkPolicy or NetworkPolicy rules will be
/// processed" — a connection the NetworkPolicy denies is allowed.
#[test]
fn admin_accept_beats_a_network_policy_deny() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: monitoring}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}
  ingress:
  - action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {}}}]
    protocols: [{destinationNamedPort: metrics}]
"#,
    );
    let (ingress, _) = judge(&inv, &flow(DNS, API, 9100));
    assert_eq!(
        ingress,
        side(
            SideResult::Allowed,
            "cnp/monitoring",
            "cnp/monitoring:ingress[0]"
        )
    );
    // Another port: the rule does not match, the NetworkPolicy denies.
    let (ingress, _) = judge(&inv, &flow(DNS, API, 9000));
    assert_eq!(
        ingress,
        (
            SideResult::Denied,
            vec!["backend/api-np".to_owned()],
            vec![]
        )
    );
}

/// "Pass: skips all further ClusterNetworkPolicy rules in the current tier ... and passes
/// evaluation to the next tier": a lower-precedence Admin deny is skipped and the
/// NetworkPolicies (or, where none isolates the pod, the Baseline tier) decide.
#[test]
fn pass_defers_to_the_network_policies() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: delegate-web}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {team: web}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-all}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}
"#,
    );
    let (ingress, _) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(
        ingress,
        side(
            SideResult::Allowed,
            "backend/api-np",
            "backend/api-np:ingress[0]"
        )
    );
    let (ingress, _) = judge(&inv, &flow(WEB, API, 9100));
    assert_eq!(
        ingress,
        (
            SideResult::Denied,
            vec!["backend/api-np".to_owned()],
            vec![]
        )
    );
    // No NetworkPolicy isolates vault, no Baseline: default allow.
    let (ingress, _) = judge(&inv, &flow(WEB, VAULT, 8200));
    assert_eq!(ingress, not_isolated());
    // Not passed: the priority-10 deny.
    let (ingress, _) = judge(&inv, &flow(DNS, VAULT, 8200));
    assert_eq!(
        ingress,
        side(
            SideResult::Denied,
            "cnp/deny-all",
            "cnp/deny-all:ingress[0]"
        )
    );
}

/// Baseline tier: evaluated only for pods no NetworkPolicy selects (for that direction).
#[test]
fn baseline_deny_applies_only_where_no_network_policy_isolates() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default-deny}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {}}
  ingress:
  - {name: deny, action: Deny, from: [{namespaces: {}}]}
"#,
    );
    // api is isolated by backend/api-np: it decides.
    let (ingress, egress) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(
        ingress,
        side(
            SideResult::Allowed,
            "backend/api-np",
            "backend/api-np:ingress[0]"
        )
    );
    assert_eq!(egress, not_isolated());
    // vault is not: the Baseline deny.
    let (ingress, egress) = judge(&inv, &flow(WEB, VAULT, 8200));
    assert_eq!(
        ingress,
        side(
            SideResult::Denied,
            "cnp/default-deny",
            "cnp/default-deny:ingress[0]:deny"
        )
    );
    // The policy has no egress rules: egress is untouched.
    assert_eq!(egress, not_isolated());
    // hostNetwork pods are outside policy scope; a pod's own node is always allowed.
    let (ingress, _) = judge(&inv, &flow(NODE_2, API, 9100));
    assert_eq!(ingress.0, SideResult::Allowed);
    let (ingress, _) = judge(&inv, &flow([192, 168, 0, 1], VAULT, 8200));
    assert_eq!(ingress.0, SideResult::Allowed);
    // From node-2 (not vault's node): the rule's peers are pods only, no match, default
    // allow.
    let (ingress, _) = judge(&inv, &flow(NODE_2, VAULT, 8200));
    assert_eq!(ingress, not_isolated());
}

/// "Policies with lower priority values have higher precedence"; within a policy the first
/// rule written wins.
#[test]
fn priorities_order_within_a_tier() {
    let two = |accept: i32, deny: i32| {
        cluster(&format!(
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: accept-web}}
spec:
  tier: Admin
  priority: {accept}
  subject: {{namespaces: {{matchLabels: {{security: high}}}}}}
  ingress: [{{action: Accept, from: [{{namespaces: {{matchLabels: {{team: web}}}}}}]}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: deny-all}}
spec:
  tier: Admin
  priority: {deny}
  subject: {{namespaces: {{matchLabels: {{security: high}}}}}}
  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]
"#
        ))
    };
    let (ingress, _) = judge(&two(10, 20), &flow(WEB, VAULT, 8200));
    assert_eq!(
        ingress,
        side(
            SideResult::Allowed,
            "cnp/accept-web",
            "cnp/accept-web:ingress[0]"
        )
    );
    let (ingress, _) = judge(&two(30, 20), &flow(WEB, VAULT, 8200));
    assert_eq!(
        ingress,
        side(
            SideResult::Denied,
            "cnp/deny-all",
            "cnp/deny-all:ingress[0]"
        )
    );
    // Rule order inside one policy.
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ordered}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {security: high}}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 8000, end: 8300}}}}]}
  - {action: Accept, from: [{namespaces: {}}]}
"#,
    );
    let (ingress, _) = judge(&inv, &flow(WEB, VAULT, 8200));
    assert_eq!(
        ingress,
        side(SideResult::Denied, "cnp/ordered", "cnp/ordered:ingress[0]")
    );
    let (ingress, _) = judge(&inv, &flow(WEB, VAULT, 8443));
    assert_eq!(
        ingress,
        side(SideResult::Allowed, "cnp/ordered", "cnp/ordered:ingress[1]")
    );
}

/// Egress: ports by number and by name, protocols, pods peers.
#[test]
fn ports_named_ports_and_protocols() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-metrics}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {app: web}}}}
  egress:
  - {action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}], protocols: [{destinationNamedPort: metrics}]}
  - {action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}], protocols: [{udp: {destinationPort: {number: 53}}}]}
"#,
    );
    let (ingress, egress) = judge(&inv, &flow(WEB, API, 9100));
    assert_eq!(
        egress,
        side(
            SideResult::Denied,
            "cnp/no-metrics",
            "cnp/no-metrics:egress[0]"
        )
    );
    assert_eq!(
        ingress.0,
        SideResult::Denied,
        "api-np does not allow 9100 either"
    );
    let (_, egress) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(egress, not_isolated());
    let udp = FlowRecord::new(
        Protocol::Udp,
        IpAddr::from(WEB),
        IpAddr::from(DNS),
        Some(53),
    );
    let (_, egress) = judge(&inv, &udp);
    assert_eq!(
        egress,
        side(
            SideResult::Denied,
            "cnp/no-metrics",
            "cnp/no-metrics:egress[1]"
        )
    );
    // TCP 53 is another protocol.
    let (_, egress) = judge(&inv, &flow(WEB, DNS, 53));
    assert_eq!(egress, not_isolated());
}

/// `networks` match addresses, pods' included; `nodes` match node addresses and the
/// hostNetwork pods on them.
#[test]
fn networks_and_nodes() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress-guard}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: web}}}
  egress:
  - {name: infra-nodes, action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}
  - {name: docs-net, action: Deny, to: [{networks: [203.0.113.0/24, "2001:db8::/32"]}]}
  - {name: pod-range, action: Deny, to: [{networks: [10.0.1.2/32]}], protocols: [{tcp: {destinationPort: {number: 9000}}}]}
"#,
    );
    let (_, egress) = judge(&inv, &flow(WEB, NODE_2, 10250));
    assert_eq!(
        egress,
        side(
            SideResult::Denied,
            "cnp/egress-guard",
            "cnp/egress-guard:egress[0]:infra-nodes"
        )
    );
    let (_, egress) = judge(&inv, &flow(WEB, [203, 0, 113, 9], 443));
    assert_eq!(
        egress,
        side(
            SideResult::Denied,
            "cnp/egress-guard",
            "cnp/egress-guard:egress[1]:docs-net"
        )
    );
    let v6 = FlowRecord::new(
        Protocol::Tcp,
        IpAddr::from(WEB),
        "2001:db8::5".parse().unwrap(),
        Some(443),
    );
    assert_eq!(judge(&inv, &v6).1.0, SideResult::Denied);
    let (_, egress) = judge(&inv, &flow(WEB, [198, 51, 100, 9], 443));
    assert_eq!(egress, not_isolated());
    // A pod's address in `networks` (and through its Service, at the backend).
    let (_, egress) = judge(&inv, &flow(WEB, API, 9000));
    assert_eq!(
        egress,
        side(
            SideResult::Denied,
            "cnp/egress-guard",
            "cnp/egress-guard:egress[2]:pod-range"
        )
    );
    let (_, egress) = judge(&inv, &flow(WEB, API_SVC, 80));
    assert_eq!(egress.0, SideResult::Denied);
    // node-1 is web's own node: always allowed.
    let (_, egress) = judge(&inv, &flow(WEB, [192, 168, 0, 1], 10250));
    assert_eq!(egress.0, SideResult::Allowed);
}

/// `domainNames` (Accept only) with a lower-precedence deny: the allowlist of names the API
/// documents. `*.example.com` matches one or more labels before example.com, not
/// example.com itself; case and a trailing dot do not matter.
#[test]
fn domain_names_allowlist() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: allow-names}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: web}}}
  egress:
  - action: Accept
    to: [{domainNames: ["*.example.com", "api.partner.io"]}]
    protocols: [{tcp: {destinationPort: {number: 443}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-external}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {team: web}}}
  egress:
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#,
    );
    let named = |names: &[&str], port: u16| {
        let mut f = flow(WEB, [198, 51, 100, 7], port);
        f.dst.dns_names = names.iter().map(|n| (*n).to_owned()).collect();
        judge(&inv, &f).1
    };
    let accepted = side(
        SideResult::Allowed,
        "cnp/allow-names",
        "cnp/allow-names:egress[0]",
    );
    let denied = side(
        SideResult::Denied,
        "cnp/deny-external",
        "cnp/deny-external:egress[0]",
    );
    assert_eq!(named(&["storage.example.com"], 443), accepted);
    assert_eq!(named(&["a.b.example.com"], 443), accepted);
    assert_eq!(named(&["STORAGE.Example.COM."], 443), accepted);
    assert_eq!(named(&["other.net", "api.partner.io"], 443), accepted);
    assert_eq!(named(&["example.com"], 443), denied);
    assert_eq!(named(&["www.partner.io"], 443), denied);
    assert_eq!(named(&["badexample.com"], 443), denied);
    assert_eq!(named(&[], 443), denied);
    assert_eq!(named(&["storage.example.com"], 80), denied);
    // Pod traffic is matched by 0.0.0.0/0 too (the API's warning).
    assert_eq!(judge(&inv, &flow(WEB, API, 9000)).1.0, SideResult::Denied);
}

fn load_error(cnp: &str) -> String {
    match Inventory::from_yaml_str(cnp, "cnp.yaml") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {cnp}"),
    }
}

#[test]
fn invalid_policies_are_errors_naming_the_field() {
    let head = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: bad}\n";
    let cases = [
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{domainNames: [example.com]}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0].to[0].domainNames: domainNames are only supported in Accept rules (this rule's action is Deny)",
        ),
        (
            "spec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}",
            "ClusterNetworkPolicy bad: field spec.priority: 1001 is not in 0-1000",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}",
            "ClusterNetworkPolicy bad: field spec.subject: exactly one of namespaces or pods must be set",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [10.0.0.0/33]}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0].to[0].networks[0]: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: []}]}",
            "ClusterNetworkPolicy bad: field spec.ingress[0].from: must have at least one item",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0].to[0]: networks, nodes and domainNames peers have no named ports",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0].protocols[0].tcp.destinationPort.range: start 90 must be less than end 80",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {matchExpressions: [{key: a, operator: Has}]}}}",
            "ClusterNetworkPolicy bad: field spec.subject.namespaces.matchExpressions[0].operator: unknown operator",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [\"*\"]}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0].to[0].domainNames[0]: \"*\" is not a domain name",
        ),
        (
            "spec: {tier: Middle, priority: 1, subject: {namespaces: {}}}",
            "ClusterNetworkPolicy bad: field spec.tier: unknown variant `Middle`, expected `Admin` or `Baseline`",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, too: [{namespaces: {}}]}]}",
            "ClusterNetworkPolicy bad: field spec.egress[0]: missing field `to`",
        ),
        (
            "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{namespaces: {}}], port: 80}]}",
            "ClusterNetworkPolicy bad: unknown field spec.egress[0].port",
        ),
    ];
    for (spec, want) in cases {
        let got = load_error(&format!("{head}{spec}\n"));
        assert!(got.contains(want), "{spec}\n got: {got}\nwant: {want}");
    }
    assert!(matches!(
        Inventory::from_yaml_str(
            &format!(
                "{head}spec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, bogus: 1}}\n"
            ),
            "x.yaml"
        ),
        Err(InventoryError::UnknownFields { .. })
    ));
}

/// Typed structs round-trip: what is loaded serialises back to the same object.
#[test]
fn policies_round_trip_through_the_types() {
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: rt}
spec:
  tier: Baseline
  priority: 7
  subject: {pods: {namespaceSelector: {matchLabels: {a: b}}, podSelector: {matchExpressions: [{key: x, operator: Exists}]}}}
  ingress: [{name: r, action: Pass, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {range: {start: 1, end: 9}}}}]}]
  egress: [{action: Accept, to: [{domainNames: [a.io]}, {nodes: {}}, {networks: [10.0.0.0/8]}]}]
"#,
    );
    let cnp = &inv.cluster_network_policies[0];
    let yaml = crate::yaml::to_string(cnp).unwrap();
    let again = Inventory::from_yaml_str(&yaml, "again.yaml").unwrap();
    assert_eq!(&again.cluster_network_policies[0], cnp, "{yaml}");
    assert_eq!(cnp.spec.priority, 7);
    assert_eq!(cnp.spec.egress[0].to.len(), 3);
}

/// Random ClusterNetworkPolicies over the synthetic cluster: the engine agrees with the
/// literal reference on every flow, explained and compact.
#[test]
fn engine_agrees_with_the_reference_on_random_cluster_policies() {
    use crate::policy::cluster::{
        Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec, EgressPeer, EgressRule,
        IngressPeer, IngressRule, NamespacedPod, Port, PortRange, ProtocolMatch, ProtocolPort,
        Subject, Tier,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let mut rng = synth::Rng::new(77);
    let inv = synth::cluster(6, 400, 77);
    let nps = synth::policies(60, 6, 77);
    let label = |rng: &mut synth::Rng| -> LabelSelector {
        let (k, v) = match rng.below(5) {
            0 => ("team", format!("team-{}", rng.below(3))),
            1 => (
                "env",
                if rng.chance(50) { "prod" } else { "dev" }.to_owned(),
            ),
            2 => ("app", format!("app-{}", rng.below(12))),
            3 => ("tier", ["web", "api", "db"][rng.below(3)].to_owned()),
            _ => return LabelSelector::default(),
        };
        LabelSelector {
            match_labels: Some([(k.to_owned(), v)].into()),
            ..Default::default()
        }
    };
    let protocols = |rng: &mut synth::Rng, named: bool| -> Option<Vec<ProtocolMatch>> {
        match rng.below(5) {
            0 => None,
            1 if named => Some(vec![ProtocolMatch {
                destination_named_port: Some(["http", "metrics", "dns"][rng.below(3)].into()),
                ..Default::default()
            }]),
            2 => Some(vec![ProtocolMatch::udp(53), ProtocolMatch::tcp(8080)]),
            3 => Some(vec![ProtocolMatch {
                tcp: Some(ProtocolPort {
                    destination_port: Some(Port {
                        number: None,
                        range: Some(PortRange {
                            start: 9000,
                            end: 9100,
                        }),
                    }),
                }),
                ..Default::default()
            }]),
            _ => Some(vec![ProtocolMatch::tcp(9090)]),
        }
    };
    let action = |rng: &mut synth::Rng| [Action::Accept, Action::Deny, Action::Pass][rng.below(3)];
    let mut cnps = Vec::new();
    for i in 0..40 {
        let subject = if rng.chance(50) {
            Subject {
                namespaces: Some(label(&mut rng)),
                pods: None,
            }
        } else {
            Subject {
                namespaces: None,
                pods: Some(NamespacedPod {
                    namespace_selector: label(&mut rng),
                    pod_selector: label(&mut rng),
                }),
            }
        };
        let ingress = (0..rng.below(3))
            .map(|_| IngressRule {
                name: rng.chance(30).then(|| "named".to_owned()),
                action: action(&mut rng),
                from: (0..1 + rng.below(2))
                    .map(|_| {
                        if rng.chance(50) {
                            IngressPeer {
                                namespaces: Some(label(&mut rng)),
                                pods: None,
                            }
                        } else {
                            IngressPeer {
                                namespaces: None,
                                pods: Some(NamespacedPod {
                                    namespace_selector: label(&mut rng),
                                    pod_selector: label(&mut rng),
                                }),
                            }
                        }
                    })
                    .collect(),
                protocols: protocols(&mut rng, true),
            })
            .collect();
        let egress = (0..rng.below(3))
            .map(|_| {
                let act = action(&mut rng);
                let mut pods_only = true;
                let to = (0..1 + rng.below(2))
                    .map(|_| match rng.below(5) {
                        0 => EgressPeer {
                            namespaces: Some(label(&mut rng)),
                            ..Default::default()
                        },
                        1 => {
                            pods_only = false;
                            EgressPeer {
                                networks: Some(vec![
                                    [
                                        "10.128.0.0/24",
                                        "203.0.113.0/25",
                                        "0.0.0.0/0",
                                        "10.1.2.0/24",
                                    ][rng.below(4)]
                                    .into(),
                                ]),
                                ..Default::default()
                            }
                        }
                        2 => {
                            pods_only = false;
                            EgressPeer {
                                nodes: Some(LabelSelector::default()),
                                ..Default::default()
                            }
                        }
                        3 if act == Action::Accept => {
                            pods_only = false;
                            EgressPeer {
                                domain_names: Some(vec!["*.example.com".into()]),
                                ..Default::default()
                            }
                        }
                        _ => EgressPeer {
                            pods: Some(NamespacedPod {
                                namespace_selector: label(&mut rng),
                                pod_selector: label(&mut rng),
                            }),
                            ..Default::default()
                        },
                    })
                    .collect();
                EgressRule {
                    name: None,
                    action: act,
                    to,
                    protocols: protocols(&mut rng, pods_only),
                }
            })
            .collect();
        cnps.push(ClusterNetworkPolicy::new(
            format!("cnp-{i}"),
            ClusterNetworkPolicySpec {
                tier: if rng.chance(50) {
                    Tier::Admin
                } else {
                    Tier::Baseline
                },
                priority: rng.below(20) as i32,
                subject,
                ingress,
                egress,
            },
        ));
    }
    let engine = PolicyEngine::compile_with_cluster(&nps, &cnps, &inv).unwrap();
    assert_eq!(engine.cluster_policy_count(), 40);
    let reference = Reference::with_cluster(&inv, &nps, &cnps).unwrap();
    let mut by_cnp = 0;
    for (i, mut f) in synth::flows(&inv, 4_000, 77).into_iter().enumerate() {
        if i % 3 == 0 {
            f.dst.dns_names = vec![["db.example.com", "example.com", "x.org"][i % 9 / 3].into()];
        }
        let v = engine.evaluate_flow(&f);
        assert_eq!(v, reference.evaluate(&f), "{f:?}");
        let c = engine.evaluate_flow_compact(&f);
        assert_eq!(
            (c.allowed, c.ingress.result, c.egress.result),
            (v.allowed, v.ingress.result, v.egress.result),
            "{f:?}"
        );
        by_cnp += [&v.ingress, &v.egress]
            .iter()
            .filter(|s| s.policies.iter().any(|p| p.starts_with("cnp/")))
            .count();
    }
    assert!(
        by_cnp > 500,
        "ClusterNetworkPolicies decided only {by_cnp} directions"
    );
}
