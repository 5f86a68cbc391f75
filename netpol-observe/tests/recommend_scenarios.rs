//! Scenario tests of the recommender: multi-namespace applications, their observed flows, the
//! recommended policies evaluated by the engine (every observed flow allowed, every
//! unobserved combination denied), golden YAML, and the specific rules each scenario needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::{FlowRecord, Protocol},
    inventory::Inventory,
    policy::PolicyEngine,
    recommend::{
        AGGREGATION, DENIED_IN_FORCE, DeniedOutcome, FIRST_SEEN, FLOWS, LAST_SEEN, RecommendConfig,
        Recommendation, Recommender, RecordedFlows, RecordedVerdict, UNOBSERVED, WARNING, WINDOW,
        WORKLOAD,
    },
};
use recommend_support::*;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"
    );
}

#[test]
fn three_tier_app() {
    let s = three_tier();
    let out = s.check();
    golden("three-tier.yaml", &out.yaml);
    let names: Vec<String> = out
        .policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "backend/default-deny",
            "backend/api-np",
            "backend/worker-np",
            "frontend/default-deny",
            "frontend/web-np"
        ]
    );

    // api: ingress from worker (same namespace, podSelector only) and from frontend/web
    // (namespaceSelector AND podSelector in one entry), on the named target port.
    let api = policy(&out.policies, "backend", "api-np");
    let spec = api.spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_selector.as_ref().unwrap().match_labels,
        Some(labels(&[("app", "api")]))
    );
    let ingress = spec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1);
    let from = ingress[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 2);
    assert_eq!(
        from[0].pod_selector.as_ref().unwrap().match_labels,
        Some(labels(&[("app", "worker")]))
    );
    assert!(from[0].namespace_selector.is_none());
    assert_eq!(
        from[1].namespace_selector.as_ref().unwrap().match_labels,
        Some(labels(&[("kubernetes.io/metadata.name", "frontend")]))
    );
    assert_eq!(
        from[1].pod_selector.as_ref().unwrap().match_labels,
        Some(labels(&[("app", "web")]))
    );
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::String("api".into())));
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));

    // api egress: the named db subnet and DNS on 53/UDP and 53/TCP to CoreDNS.
    let egress = spec.egress.as_ref().unwrap();
    let yaml = netpol_observe_core::yaml::to_string(egress).unwrap();
    assert!(yaml.contains("cidr: 10.0.2.0/24"), "{yaml}");
    let dns_rule = egress
        .iter()
        .find(|r| {
            r.to.as_ref().unwrap()[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                == Some(&labels(&[("k8s-app", "kube-dns")]))
        })
        .expect("DNS rule");
    let dns_ports: Vec<(String, IntOrString)> = dns_rule
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.protocol.clone().unwrap(), p.port.clone().unwrap()))
        .collect();
    assert_eq!(
        dns_ports,
        [
            ("TCP".to_owned(), IntOrString::Int(53)),
            ("UDP".to_owned(), IntOrString::Int(53))
        ]
    );
    assert_eq!(
        dns_rule.to.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels,
        Some(labels(&[("kubernetes.io/metadata.name", "kube-system")]))
    );

    // web: ingress from the two internet clients (aggregated within /24) on `http`; no rule
    // for the kubelet probes from the own node.
    let web = policy(&out.policies, "frontend", "web-np");
    let wi = web.spec.as_ref().unwrap().ingress.as_ref().unwrap();
    assert_eq!(wi.len(), 1);
    let blocks: Vec<&str> = wi[0]
        .from
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.ip_block.as_ref().unwrap().cidr.as_str())
        .collect();
    assert_eq!(blocks, ["203.0.113.0/28"]);
    // The annotation states the real prefix.
    assert!(
        annotation(web, AGGREGATION)
            .unwrap()
            .contains("2 public address(es) written as 203.0.113.0/28"),
        "{:?}",
        annotation(web, AGGREGATION)
    );

    // Evidence on every policy.
    for p in &out.policies {
        for key in [FLOWS, FIRST_SEEN, LAST_SEEN, WINDOW] {
            assert!(
                annotation(p, key).is_some(),
                "{key} missing on {:?}",
                p.metadata.name
            );
        }
    }
    assert_eq!(annotation(web, FLOWS), Some("8"));
    assert_eq!(annotation(web, WORKLOAD), Some("Deployment/web"));
    assert_eq!(annotation(web, WARNING), None);
    // kube-system is excluded by default.
    assert!(
        out.policies
            .iter()
            .all(|p| p.metadata.namespace.as_deref() != Some("kube-system"))
    );
}

#[test]
fn output_is_deterministic_whatever_the_flow_order() {
    let mut s = three_tier();
    let a = s.check().yaml;
    s.flows.reverse();
    let b = s.check().yaml;
    s.flows.rotate_left(5);
    let c = s.check().yaml;
    assert_eq!(a, b);
    assert_eq!(a, c);
}

/// Voting app: vote → redis, worker → redis and db (StatefulSet), result → db, all resolve
/// names; a load balancer brings users to vote and result.
#[test]
fn voting_app() {
    let mut c = Cluster::new();
    c.kube_dns("10.96.0.10");
    let vote = c.deployment("vote", "vote", 2, &[("http", 80, "TCP")]);
    c.deployment("vote", "redis", 1, &[("redis", 6379, "TCP")]);
    let worker = c.deployment("vote", "worker", 1, &[]);
    c.statefulset("vote", "db", 1, &[("postgres", 5432, "TCP")]);
    let result = c.deployment("vote", "result", 1, &[("http", 80, "TCP")]);
    c.service(
        "vote",
        "redis",
        "10.96.1.1",
        serde_json::json!({"app": "redis"}),
        &[(6379, serde_json::json!(6379), "TCP")],
    );
    c.service(
        "vote",
        "db",
        "10.96.1.2",
        serde_json::json!({"app": "db"}),
        &[(5432, serde_json::json!("postgres"), "TCP")],
    );
    let mut s = Scenario::new(c);
    let mut m = 0;
    for v in &vote {
        m += 1;
        s.flows.push(udp(*v, "10.96.0.10", 53, m));
        s.flows.push(tcp(*v, "10.96.1.1", 6379, m));
        s.flows.push(tcp(ip("10.1.0.4"), &v.to_string(), 80, m));
    }
    for (dst, port) in [("10.96.0.10", 53), ("10.96.1.1", 6379), ("10.96.1.2", 5432)] {
        m += 1;
        if port == 53 {
            s.flows.push(udp(worker[0], dst, port, m));
            s.flows.push(tcp(worker[0], dst, port, m));
        } else {
            s.flows.push(tcp(worker[0], dst, port, m));
        }
    }
    s.flows.push(udp(result[0], "10.96.0.10", 53, 90));
    s.flows.push(tcp(result[0], "10.96.1.2", 5432, 91));
    s.flows
        .push(tcp(ip("10.1.0.4"), &result[0].to_string(), 80, 92));
    let out = s.check();
    let db = policy(&out.policies, "vote", "db-np");
    let spec = db.spec.as_ref().unwrap();
    // StatefulSet pods are selected by the stable label only.
    assert_eq!(
        spec.pod_selector.as_ref().unwrap().match_labels,
        Some(labels(&[("app", "db")]))
    );
    let from = spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
    let clients: Vec<_> = from
        .iter()
        .map(|p| {
            p.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .clone()
                .unwrap()["app"]
                .clone()
        })
        .collect();
    assert_eq!(clients, ["result", "worker"]);
    // db has no egress observed: an Egress-isolating policy without egress rules.
    assert!(spec.egress.is_none());
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    // The private load balancer address becomes a host block.
    let vote_p = policy(&out.policies, "vote", "vote-np");
    let yaml = netpol_observe_core::yaml::to_string(vote_p).unwrap();
    assert!(yaml.contains("cidr: 10.1.0.4/32"), "{yaml}");
}

/// An app reached through a load balancer from many public addresses and an application
/// gateway subnet, calling a CDN with many addresses: whole-Internet blocks that still exclude
/// the cluster (pod-to-pod stays denied), flagged by an annotation.
#[test]
fn load_balanced_app_with_many_public_peers() {
    let mut c = Cluster::new();
    let web = c.deployment("shop", "web", 2, &[("http", 8080, "TCP")]);
    c.deployment("shop", "cart", 1, &[("http", 8080, "TCP")]);
    let mut s = Scenario::new(c);
    s.subnets = Subnets::new([("appgw-subnet".to_owned(), "10.1.0.0/24".parse().unwrap())]);
    for i in 0..40u8 {
        s.flows.push(tcp(
            ip(&format!("198.51.{}.{}", 100 + i / 10, i + 1)),
            &web[(i % 2) as usize].to_string(),
            8080,
            i64::from(i),
        ));
        s.flows.push(tcp(
            web[0],
            &format!("151.101.{i}.{}", 2 + i),
            443,
            i64::from(i),
        ));
    }
    s.flows
        .push(tcp(ip("10.1.0.5"), &web[1].to_string(), 8080, 50));
    let out = s.check();
    let p = policy(&out.policies, "shop", "web-np");
    let ann = annotation(p, AGGREGATION).unwrap();
    assert!(
        ann.contains("ingress http/TCP: 40 distinct public addresses"),
        "{ann}"
    );
    assert!(
        ann.contains("egress 443/TCP: 40 distinct public addresses"),
        "{ann}"
    );
    let spec = p.spec.as_ref().unwrap();
    let ingress_blocks: Vec<(String, Vec<String>)> = spec.ingress.as_ref().unwrap()[0]
        .from
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            let b = p.ip_block.as_ref().unwrap();
            (b.cidr.clone(), b.except.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(ingress_blocks[0].0, "0.0.0.0/0");
    assert!(ingress_blocks[0].1.contains(&"10.0.0.0/8".to_owned()));
    assert_eq!(ingress_blocks[1].0, "10.1.0.0/24");
    assert_eq!(ingress_blocks[2].0, "::/0");
    assert_eq!(ingress_blocks[2].1, ["fc00::/7", "fe80::/10"]);
    // cart has no observed traffic: no policy, but the namespace default-deny isolates it.
    assert!(
        out.policies
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some("cart-np"))
    );
}

/// A CronJob that ran once and called an external API: selected by labels that survive the
/// next run, with a warning annotation.
#[test]
fn cronjob_calling_an_external_api() {
    let mut c = Cluster::new();
    c.kube_dns("10.96.0.10");
    let run1 = c.cronjob_run("batch", "report", "28930", "node-1");
    c.deployment("batch", "store", 1, &[("http", 8080, "TCP")]);
    let mut s = Scenario::new(c);
    s.flows.push(udp(run1, "10.96.0.10", 53, 0));
    s.flows.push(tcp(run1, "93.184.215.14", 443, 0));
    let out = s.check();
    let p = policy(&out.policies, "batch", "report-np");
    let sel = p.spec.as_ref().unwrap().pod_selector.as_ref().unwrap();
    assert_eq!(sel.match_labels, Some(labels(&[("app", "report")])));
    let w = annotation(p, WARNING).unwrap();
    assert!(w.contains("CronJob seen in a single run"), "{w}");
    let yaml = netpol_observe_core::yaml::to_string(p).unwrap();
    assert!(yaml.contains("cidr: 93.184.215.14/32"), "{yaml}");

    // The next run (new Job, new controller-uid) is selected by the same policy.
    let mut next = s.cluster;
    next.cronjob_run("batch", "report", "28931", "node-2");
    let inv = next.inventory();
    let engine = PolicyEngine::compile(&out.policies, &inv).unwrap();
    let sel = engine
        .policies_selecting("batch", "report-28931-x28931")
        .unwrap();
    assert_eq!(sel.egress, ["batch/default-deny", "batch/report-np"]);
    let mut f = tcp(next.pods.last().unwrap().ip, "93.184.215.14", 443, 60);
    Attributor::new(&inv, &Subnets::default()).attribute(&mut f);
    assert!(engine.evaluate_flow(&f).allowed);
    let _ = Protocol::Tcp;
}

/// ICMP cannot be written as a port: the peer gets every port, as documented.
#[test]
fn icmp_peer_gets_every_port_and_default_deny_is_opt_out() {
    let mut c = Cluster::new();
    let a = c.deployment("net", "pinger", 1, &[]);
    let b = c.deployment("net", "target", 1, &[("http", 80, "TCP")]);
    let mut s = Scenario::new(c);
    s.flows
        .push(FlowRecord::new(Protocol::Icmp, a[0], b[0], None));
    s.config.default_deny = false;
    let inv = s.cluster.inventory();
    let rec = Recommender::new(&inv, &s.subnets, s.config.clone()).recommend(&s.flows);
    assert_eq!(rec.stats.self_check_denied, 0);
    assert!(
        rec.policies
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some("default-deny"))
    );
    let t = policy(&rec.policies, "net", "target-np");
    let rule = &t.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
    assert!(rule.ports.is_none());
}

/// Node-local DNS (169.254.20.10) and a link-local resolver get 53/UDP+TCP to their address;
/// a probe from another node (not the pod's own) becomes a /32 of that node.
#[test]
fn node_local_dns_link_local_resolver_and_other_nodes() {
    let mut c = Cluster::new();
    let app = c.deployment("app", "app", 1, &[("http", 8080, "TCP")]);
    c.deployment("app", "other", 1, &[("http", 8080, "TCP")]);
    let mut s = Scenario::new(c);
    s.flows.push(udp(app[0], "169.254.20.10", 53, 1));
    s.flows.push(udp(app[0], "169.254.169.253", 53, 2));
    // app[0] runs on node-1 (192.168.1.10): its probe needs no rule, node-2's does.
    s.flows
        .push(tcp(ip("192.168.1.10"), &app[0].to_string(), 8080, 3));
    s.flows
        .push(tcp(ip("192.168.1.11"), &app[0].to_string(), 8080, 4));
    let out = s.check();
    let p = policy(&out.policies, "app", "app-np");
    let spec = p.spec.as_ref().unwrap();
    let egress = spec.egress.as_ref().unwrap();
    assert_eq!(egress.len(), 1);
    let to: Vec<&str> = egress[0]
        .to
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.ip_block.as_ref().unwrap().cidr.as_str())
        .collect();
    assert_eq!(to, ["169.254.20.10/32", "169.254.169.253/32"]);
    let ports: Vec<String> = egress[0]
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{:?}/{}",
                p.port.as_ref().unwrap(),
                p.protocol.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(ports, ["Int(53)/TCP", "Int(53)/UDP"]);
    let from: Vec<&str> = spec.ingress.as_ref().unwrap()[0]
        .from
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.ip_block.as_ref().unwrap().cidr.as_str())
        .collect();
    assert_eq!(from, ["192.168.1.11/32"]);
    assert_eq!(annotation(p, FLOWS), Some("3"));
}

/// The recommended policies, compiled: whether each of `flows` (attributed) is allowed.
fn allowed(rec: &Recommendation, inventory: &Inventory, flows: &[&FlowRecord]) -> Vec<bool> {
    let engine = PolicyEngine::compile(&rec.policies, inventory).unwrap();
    flows
        .iter()
        .map(|f| engine.evaluate_flow(f).allowed)
        .collect()
}

/// Learning under enforcement (issue 26, item 1): web → api is legitimate; web's 5
/// connections to db:5432 the kernel dropped (`attempted`, drops by shop/db-np) and the knock
/// of 203.0.113.1 on api:9000 (`attempted`, denied by shop/api-np, no drop seen) were denied
/// by the policies in force and never got through. By default they get no allow rule and are
/// listed for review with their isolating policy (notes, stats, the list, an annotation on
/// default-deny); `include_denied` learns them.
#[test]
fn flows_the_policies_in_force_denied_are_not_learned() {
    let (s, knock) = knocked_shop(true);
    let inventory = s.cluster.inventory();
    let attributor = Attributor::new(&inventory, &s.subnets);
    let attributed: Vec<FlowRecord> = s
        .flows
        .iter()
        .cloned()
        .map(|mut f| {
            attributor.attribute(&mut f);
            f
        })
        .collect();
    let (legit, db, world) = (&attributed[0], &attributed[6], &attributed[knock]);
    assert_eq!(db.dst.port, Some(5432));

    let rec =
        Recommender::new(&inventory, &s.subnets, RecommendConfig::default()).recommend(&s.flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    assert_streamed(
        &inventory,
        &s.subnets,
        RecommendConfig::default(),
        &s.flows.clone().into(),
        &rec,
    );
    assert_eq!(
        allowed(&rec, &inventory, &[legit, db, world]),
        [true, false, false]
    );
    let names: Vec<&str> = rec
        .policies
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "api-np", "web-np"]);
    assert_eq!((rec.stats.denied, rec.stats.denied_not_learned), (6, 6));
    let listed: Vec<(String, u64, &str, DeniedOutcome, Option<bool>)> = rec
        .denied
        .iter()
        .map(|d| {
            (
                d.connection(),
                d.flows,
                d.denied_by.as_str(),
                d.outcome,
                d.recommended_allows,
            )
        })
        .collect();
    let db_why = "ingress denied, isolated by shop/db-np; 2 packet(s) dropped (NETFILTER_DROP) by shop/db-np";
    let world_why = "ingress denied, isolated by shop/api-np";
    assert_eq!(
        listed,
        [
            (
                "shop/Deployment/web -> shop/StatefulSet/db:5432/TCP".to_owned(),
                5,
                db_why,
                DeniedOutcome::NotLearned,
                Some(false)
            ),
            (
                "subnet/world -> shop/Deployment/api:9000/TCP".to_owned(),
                1,
                world_why,
                DeniedOutcome::NotLearned,
                Some(false)
            ),
        ]
    );
    for want in [
        "denied by the policies in force — 6 flow(s): 6 not turned into allow rules".to_owned(),
        format!(
            "denied by the policies in force — review: shop/Deployment/web -> shop/StatefulSet/db:5432/TCP (5 flow(s); {db_why}): not learned: no allow rule written (--include-denied to learn it)"
        ),
        format!(
            "denied by the policies in force — review: subnet/world -> shop/Deployment/api:9000/TCP (1 flow(s); {world_why}): not learned: no allow rule written (--include-denied to learn it)"
        ),
    ] {
        assert!(
            rec.notes.iter().any(|n| n.starts_with(&want)),
            "{want}\n{:#?}",
            rec.notes
        );
    }
    let deny = policy(&rec.policies, "shop", "default-deny");
    assert_eq!(
        annotation(deny, DENIED_IN_FORCE),
        Some(
            format!(
                "5 flow(s) shop/Deployment/web -> shop/StatefulSet/db:5432/TCP ({db_why}); 1 flow(s) subnet/world -> shop/Deployment/api:9000/TCP ({world_why})"
            )
            .as_str()
        )
    );
    // db received nothing legitimate: default-deny isolates it, and says so.
    assert!(
        annotation(deny, UNOBSERVED).is_some_and(|u| u.contains("StatefulSet/db")),
        "{deny:?}"
    );

    // --include-denied: both are learned, and still listed.
    let config = RecommendConfig {
        include_denied: true,
        ..RecommendConfig::default()
    };
    let rec = Recommender::new(&inventory, &s.subnets, config.clone()).recommend(&s.flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    assert_streamed(
        &inventory,
        &s.subnets,
        config,
        &s.flows.clone().into(),
        &rec,
    );
    assert_eq!(
        allowed(&rec, &inventory, &[legit, db, world]),
        [true, true, true]
    );
    assert_eq!((rec.stats.denied, rec.stats.denied_not_learned), (6, 0));
    assert!(
        rec.denied
            .iter()
            .all(|d| d.outcome == DeniedOutcome::Included)
    );
    assert_eq!(
        annotation(
            policy(&rec.policies, "shop", "default-deny"),
            DENIED_IN_FORCE
        ),
        None
    );
}

/// A flow the policies in force denied that was delivered all the same (the agent marked it
/// `unenforced`; another completed its handshake) is real traffic the CNI did not block:
/// learned, and noted. A verdict recorded with the flow (allowed when it was observed) wins
/// over the inventory's policies. Without state and packets (hand-written records), a flow
/// only the inventory's policies deny is learned, with a note.
#[test]
fn denied_but_delivered_flows_are_learned_and_noted() {
    use netpol_observe_core::flow::{FlowState, Unenforced};
    let (mut s, knock) = knocked_shop(true);
    // web → db: one connection got through (the node did not enforce shop/db-np).
    let mut through = s.flows[6].clone();
    through.src.port = Some(45000);
    through.state = Some(FlowState::Closed);
    through.drops = None;
    through.packets = Some(netpol_observe_core::flow::Directional {
        sent: 8,
        received: 7,
    });
    through.unenforced = Some(Unenforced {
        policy: "shop/db-np".into(),
    });
    s.flows.push(through);
    // A hand-written record: web → api:9000 directly (api-np allows web), and 203.0.113.9 →
    // api:9000 (api-np denies it) with neither state nor packets.
    let api = s.flows[knock].dst.ip.to_string();
    s.flows.push(tcp(ip("203.0.113.9"), &api, 9000, 200));
    let inventory = s.cluster.inventory();
    let mut input = RecordedFlows::default();
    for (i, f) in s.flows.iter().enumerate() {
        // The knock's source said: allowed when observed (before shop/api-np existed).
        let v = (i == knock).then_some(RecordedVerdict::Allowed);
        input.push(f.clone(), v);
    }
    let rec = Recommender::new(&inventory, &s.subnets, RecommendConfig::default())
        .recommend_recorded(&input);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    assert_streamed(
        &inventory,
        &s.subnets,
        RecommendConfig::default(),
        &input,
        &rec,
    );
    let listed: Vec<(String, u64, DeniedOutcome)> = rec
        .denied
        .iter()
        .map(|d| (d.connection(), d.flows, d.outcome))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "shop/Deployment/web -> shop/StatefulSet/db:5432/TCP".to_owned(),
                5,
                DeniedOutcome::NotLearned
            ),
            (
                "shop/Deployment/web -> shop/StatefulSet/db:5432/TCP".to_owned(),
                1,
                DeniedOutcome::Delivered
            ),
            (
                "subnet/world -> shop/Deployment/api:9000/TCP".to_owned(),
                1,
                DeniedOutcome::Unverified
            ),
        ]
    );
    // The delivered connection opened web → db, so the dropped ones are allowed too: said.
    assert_eq!(rec.denied[0].recommended_allows, Some(true));
    for want in [
        "shop/Deployment/web -> shop/StatefulSet/db:5432/TCP (5 flow(s); ingress denied, isolated by shop/db-np; 2 packet(s) dropped (NETFILTER_DROP) by shop/db-np): not learned, though the rules of the same observed connection allow it",
        "shop/Deployment/web -> shop/StatefulSet/db:5432/TCP (1 flow(s); ingress denied, isolated by shop/db-np): delivered all the same (the CNI did not enforce the policy): kept as observed traffic",
        "subnet/world -> shop/Deployment/api:9000/TCP (1 flow(s); ingress denied, isolated by shop/api-np): the records say nothing of delivery (no state, no packets): kept as observed traffic",
    ] {
        assert!(
            rec.notes.iter().any(|n| n.ends_with(want)),
            "{want}\n{:#?}",
            rec.notes
        );
    }
    let names: Vec<&str> = rec
        .policies
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "api-np", "db-np", "web-np"]);
}
