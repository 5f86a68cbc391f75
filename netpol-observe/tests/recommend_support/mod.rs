//! Shared by the recommend/verify tests: a small cluster builder writing ordinary Kubernetes
//! objects (what `kubectl get -o yaml` prints), flow constructors, and the scenario checker
//! (the recommended policies allow every observed flow and deny every unobserved
//! (client workload, server workload, port) combination among known workloads).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_arguments
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use jiff::Timestamp;
use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::{FlowRecord, Protocol},
    inventory::{Inventory, NetworkPolicy},
    policy::PolicyEngine,
    recommend::{RecommendConfig, Recommendation, Recommender, RecordedFlows, render_yaml},
};
use serde_json::{Value, json};

pub(crate) mod cilium;

/// A pod of the builder: namespace, name, IP, workload kind and name, node.
#[derive(Debug, Clone)]
pub(crate) struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    pub kind: String,
    pub workload: String,
    pub node: String,
}

/// Builds Kubernetes objects.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    pub objects: Vec<Value>,
    pub pods: Vec<Pod>,
    next_ip: u32,
    namespaces: BTreeSet<String>,
}

fn ports_json(ports: &[(&str, u16, &str)]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(name, port, proto)| {
                let mut p = json!({"containerPort": port, "protocol": proto});
                if !name.is_empty() {
                    p["name"] = json!(name);
                }
                p
            })
            .collect(),
    )
}

impl Cluster {
    pub(crate) fn new() -> Self {
        let mut c = Cluster::default();
        for (name, ip) in [("node-1", "192.168.1.10"), ("node-2", "192.168.1.11")] {
            c.objects.push(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {"podCIDR": if name == "node-1" {"10.244.1.0/24"} else {"10.244.2.0/24"}},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
            }));
        }
        c
    }

    pub(crate) fn namespace(&mut self, name: &str) {
        if self.namespaces.insert(name.to_owned()) {
            self.objects.push(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}
            }));
        }
    }

    fn ip(&mut self, node: &str) -> IpAddr {
        self.next_ip += 1;
        let third = if node == "node-1" { 1 } else { 2 };
        format!("10.244.{third}.{}", self.next_ip + 10)
            .parse()
            .unwrap()
    }

    fn pod(
        &mut self,
        ns: &str,
        name: &str,
        labels: Value,
        owner: Option<(&str, &str, &str)>,
        ports: &[(&str, u16, &str)],
        node: &str,
        (kind, workload): (&str, &str),
    ) -> IpAddr {
        self.namespace(ns);
        let ip = self.ip(node);
        let mut meta = json!({"name": name, "namespace": ns, "labels": labels,
                              "uid": format!("uid-{ns}-{name}"),
                              "creationTimestamp": "2026-11-22T00:00:00Z"});
        if let Some((api, kind, owner_name)) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": api, "kind": kind, "name": owner_name,
                                              "uid": format!("uid-{owner_name}"), "controller": true}]);
        }
        self.objects.push(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example", "ports": ports_json(ports)}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
        }));
        self.pods.push(Pod {
            namespace: ns.into(),
            name: name.into(),
            ip,
            kind: kind.into(),
            workload: workload.into(),
            node: node.into(),
        });
        ip
    }

    /// A Deployment's pods (labels `app: <name>` unless given), alternating nodes.
    pub(crate) fn deployment(
        &mut self,
        ns: &str,
        name: &str,
        replicas: usize,
        ports: &[(&str, u16, &str)],
    ) -> Vec<IpAddr> {
        let hash = "5f7c9d";
        (0..replicas)
            .map(|i| {
                let node = if i % 2 == 0 { "node-1" } else { "node-2" };
                self.pod(
                    ns,
                    &format!("{name}-{hash}-p{i}"),
                    json!({"app": name, "pod-template-hash": hash}),
                    Some(("apps/v1", "ReplicaSet", &format!("{name}-{hash}"))),
                    ports,
                    node,
                    ("Deployment", name),
                )
            })
            .collect()
    }

    /// A StatefulSet's pods.
    pub(crate) fn statefulset(
        &mut self,
        ns: &str,
        name: &str,
        replicas: usize,
        ports: &[(&str, u16, &str)],
    ) -> Vec<IpAddr> {
        (0..replicas)
            .map(|i| {
                let pod = format!("{name}-{i}");
                self.pod(
                    ns,
                    &pod,
                    json!({"app": name, "controller-revision-hash": format!("{name}-7b9"),
                           "statefulset.kubernetes.io/pod-name": pod}),
                    Some(("apps/v1", "StatefulSet", name)),
                    ports,
                    "node-1",
                    ("StatefulSet", name),
                )
            })
            .collect()
    }

    /// One run of a CronJob: the Job object and its pod, with the Job's volatile labels.
    pub(crate) fn cronjob_run(&mut self, ns: &str, cronjob: &str, run: &str, node: &str) -> IpAddr {
        self.namespace(ns);
        let job = format!("{cronjob}-{run}");
        self.objects.push(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job, "namespace": ns, "uid": format!("uid-{job}"),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob,
                                              "uid": format!("uid-{cronjob}"), "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "example"}]}}}
        }));
        self.pod(
            ns,
            &format!("{job}-x{run}"),
            json!({"app": cronjob, "job-name": job, "controller-uid": format!("cu-{run}"),
                   "batch.kubernetes.io/job-name": job,
                   "batch.kubernetes.io/controller-uid": format!("cu-{run}")}),
            Some(("batch/v1", "Job", &job)),
            &[],
            node,
            ("CronJob", cronjob),
        )
    }

    /// CoreDNS in kube-system (labels `k8s-app: kube-dns`) and the `kube-dns` Service.
    pub(crate) fn kube_dns(&mut self, cluster_ip: &str) -> IpAddr {
        self.namespace("kube-system");
        let ip = self.pod(
            "kube-system",
            "coredns-6d4b-p0",
            json!({"k8s-app": "kube-dns", "pod-template-hash": "6d4b"}),
            Some(("apps/v1", "ReplicaSet", "coredns-6d4b")),
            &[
                ("dns", 53, "UDP"),
                ("dns-tcp", 53, "TCP"),
                ("metrics", 9153, "TCP"),
            ],
            "node-1",
            ("Deployment", "coredns"),
        );
        self.service(
            "kube-system",
            "kube-dns",
            cluster_ip,
            json!({"k8s-app": "kube-dns"}),
            &[(53, json!("dns"), "UDP"), (53, json!("dns-tcp"), "TCP")],
        );
        ip
    }

    pub(crate) fn service(
        &mut self,
        ns: &str,
        name: &str,
        cluster_ip: &str,
        selector: Value,
        ports: &[(u16, Value, &str)],
    ) {
        let ports: Vec<Value> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, target, proto))| {
                json!({"name": format!("p{i}"), "port": port, "targetPort": target, "protocol": proto})
            })
            .collect();
        self.objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": selector, "ports": ports}
        }));
    }

    pub(crate) fn yaml(&self) -> String {
        self.objects
            .iter()
            .map(|o| format!("---\n{}", netpol_observe_core::yaml::to_string(o).unwrap()))
            .collect()
    }

    pub(crate) fn inventory(&self) -> Inventory {
        Inventory::from_yaml_str(&self.yaml(), "test-cluster.yaml").unwrap()
    }
}

/// An unattributed flow, as input files may hold them.
pub(crate) fn flow(
    proto: Protocol,
    src: IpAddr,
    dst: &str,
    port: Option<u16>,
    minute: i64,
) -> FlowRecord {
    let mut f = FlowRecord::new(proto, src, dst.parse().unwrap(), port);
    f.src.port = Some(40000 + (minute as u16 % 1000));
    let t = Timestamp::from_second(1_795_000_000 + minute * 60).unwrap();
    f.first_seen = Some(t);
    f.last_seen = Some(t.checked_add(jiff::SignedDuration::from_secs(2)).unwrap());
    f
}

pub(crate) fn tcp(src: IpAddr, dst: &str, port: u16, minute: i64) -> FlowRecord {
    flow(Protocol::Tcp, src, dst, Some(port), minute)
}

pub(crate) fn udp(src: IpAddr, dst: &str, port: u16, minute: i64) -> FlowRecord {
    flow(Protocol::Udp, src, dst, Some(port), minute)
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Parses a multi-document YAML stream into k8s-openapi NetworkPolicies.
pub(crate) fn parse_policies(yaml: &str) -> Vec<NetworkPolicy> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

/// The streamed path (records folded as they are read) says what `rec`, made from `input`
/// held, says.
pub(crate) fn assert_streamed(
    inventory: &Inventory,
    subnets: &Subnets,
    config: RecommendConfig,
    input: &RecordedFlows,
    rec: &Recommendation,
) {
    let recommender = Recommender::new(inventory, subnets, config);
    let streamed = recommender.recommend_aggregate(&recommender.aggregate_recorded(input));
    assert_same(rec, &streamed);
}

/// `a` and `b` say the same: policies (as YAML), notes, counts, denied flows, hints.
pub(crate) fn assert_same(a: &Recommendation, b: &Recommendation) {
    assert_eq!(
        render_yaml(&a.policies).unwrap(),
        render_yaml(&b.policies).unwrap()
    );
    assert_eq!(a.notes, b.notes);
    assert_eq!(a.stats, b.stats);
    assert_eq!(
        serde_json::to_string(&a.denied).unwrap(),
        serde_json::to_string(&b.denied).unwrap()
    );
    assert_eq!(a.hints, b.hints);
    assert_eq!(a.excluded_namespaces, b.excluded_namespaces);
}

/// Everything a scenario needs.
#[derive(Debug)]
pub(crate) struct Scenario {
    pub cluster: Cluster,
    pub subnets: Subnets,
    pub flows: Vec<FlowRecord>,
    pub config: RecommendConfig,
}

/// The recommendation and the engine compiled from its YAML (re-parsed).
#[derive(Debug)]
pub(crate) struct Checked {
    pub rec: Recommendation,
    pub yaml: String,
    pub policies: Vec<NetworkPolicy>,
    pub inventory: Inventory,
    /// The same recommendation as CiliumNetworkPolicies (`--format cilium`), read back.
    pub cilium: Vec<netpol_observe_core::recommend::cilium::types::CiliumNetworkPolicy>,
    /// Flows the Cilium checker evaluated: observed (allowed) and unobserved (denied).
    pub cilium_checked: (usize, usize),
}

impl Scenario {
    pub(crate) fn new(cluster: Cluster) -> Self {
        Scenario {
            cluster,
            subnets: Subnets::default(),
            flows: Vec::new(),
            config: RecommendConfig::default(),
        }
    }

    /// Recommends, renders, re-parses, and checks the two scenario invariants; returns the
    /// results for scenario-specific assertions.
    pub(crate) fn check(&self) -> Checked {
        let inventory = self.cluster.inventory();
        let recommender = Recommender::new(&inventory, &self.subnets, self.config.clone());
        let rec = recommender.recommend(&self.flows);
        assert_eq!(rec.stats.self_check_denied, 0, "notes: {:#?}", rec.notes);
        let yaml = render_yaml(&rec.policies).unwrap();
        // The streamed path (records folded as they are read, `recommend` on the CLI) gives the
        // same recommendation, byte for byte.
        let streamed = recommender
            .recommend_aggregate(&recommender.aggregate_recorded(&self.flows.clone().into()));
        assert_same(&rec, &streamed);
        let policies = parse_policies(&yaml);
        assert_eq!(policies, rec.policies, "YAML round trip");
        let engine = PolicyEngine::compile(&policies, &inventory).unwrap();
        let attributor = Attributor::new(&inventory, &self.subnets);
        let (cilium_policies, cilium_yaml) = cilium::cilium_policies(&rec, &inventory);
        let cilium = cilium::checker(&cilium_policies, &inventory, &attributor);
        let mut cilium_checked = (0, 0);

        // 1. Every observed flow is allowed (by the NetworkPolicies and by their Cilium form).
        let mut observed: BTreeSet<(String, String, u16, Protocol)> = BTreeSet::new();
        for f in &self.flows {
            let mut f = f.clone();
            attributor.attribute(&mut f);
            let v = engine.evaluate_flow(&f);
            assert!(v.allowed, "observed flow denied: {f:?}\n{v:?}\n{yaml}");
            let c = cilium.evaluate(&f);
            assert!(
                c.allowed,
                "observed flow denied by the Cilium policies: {f:?}\n{c:?}\n{cilium_yaml}"
            );
            cilium_checked.0 += 1;
            if let (Some(s), Some(d), Some(port)) = (
                workload_of(&f.src),
                workload_of(&f.dst),
                attributor.backend_port(&f),
            ) {
                observed.insert((s, d, port, f.protocol));
            }
        }

        // 2. Every unobserved (client, server, port) combination among known workloads is
        // denied, except the documented aggregations: DNS gets both protocols, and
        // traffic between namespaces without policies (kube-system, unobserved) is untouched.
        // Namespaces without observed workloads get no policies (no evidence about them):
        // a combination is checked when one side is in a namespace the recommender covers.
        let covered: BTreeSet<&str> = policies
            .iter()
            .filter_map(|p| p.metadata.namespace.as_deref())
            .collect();
        let excluded = |ns: &str| !covered.contains(ns);
        let mut checked = 0;
        let mut seen_pairs = BTreeSet::new();
        for c in &self.cluster.pods {
            for s in &self.cluster.pods {
                let (ck, sk) = (
                    format!("{}/{}/{}", c.namespace, c.kind, c.workload),
                    format!("{}/{}/{}", s.namespace, s.kind, s.workload),
                );
                if c.name == s.name || (excluded(&c.namespace) && excluded(&s.namespace)) {
                    continue;
                }
                if !seen_pairs.insert((ck.clone(), sk.clone())) {
                    continue;
                }
                let pod = inventory.pod(&s.namespace, &s.name).unwrap();
                let mut ports: BTreeSet<(u16, Protocol)> = pod
                    .container_ports
                    .iter()
                    .map(|p| (p.port, p.protocol))
                    .collect();
                ports.insert((8443, Protocol::Tcp));
                for (port, proto) in ports {
                    let dns_sibling = port == 53
                        && (observed.contains(&(ck.clone(), sk.clone(), 53, Protocol::Udp))
                            || observed.contains(&(ck.clone(), sk.clone(), 53, Protocol::Tcp)));
                    if observed.contains(&(ck.clone(), sk.clone(), port, proto)) || dns_sibling {
                        continue;
                    }
                    let mut f = flow(proto, c.ip, &s.ip.to_string(), Some(port), 0);
                    attributor.attribute(&mut f);
                    let v = engine.evaluate_flow(&f);
                    assert!(
                        !v.allowed,
                        "unobserved {ck} -> {sk}:{port}/{proto} allowed: {v:?}\n{yaml}"
                    );
                    let c = cilium.evaluate(&f);
                    assert!(
                        !c.allowed,
                        "unobserved {ck} -> {sk}:{port}/{proto} allowed by the Cilium policies: {c:?}\n{cilium_yaml}"
                    );
                    cilium_checked.1 += 1;
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
        Checked {
            rec,
            yaml,
            policies,
            inventory,
            cilium: cilium_policies,
            cilium_checked,
        }
    }
}

pub(crate) fn workload_of(ep: &netpol_observe_core::flow::Endpoint) -> Option<String> {
    let w = ep.workload.as_ref()?;
    Some(format!("{}/{}/{}", ep.namespace.as_ref()?, w.kind, w.name))
}

/// The policy `ns/name`.
pub(crate) fn policy<'a>(list: &'a [NetworkPolicy], ns: &str, name: &str) -> &'a NetworkPolicy {
    list.iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no policy {ns}/{name}"))
}

pub(crate) fn annotation<'a>(p: &'a NetworkPolicy, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// shop/checkout calls two SaaS APIs by name and one partner address without a name:
/// `api.stripe.com` at 54.1.2.3 and 54.1.2.9 (the same /24 as the unnamed 54.1.2.20),
/// `hooks.slack.com` at 35.190.0.5 (alone), all on 443; its lookups go to kube-dns. With
/// `idle_namespace`, a pod of namespace `idle` has no traffic.
pub(crate) fn saas_egress(idle_namespace: bool) -> Scenario {
    let mut c = Cluster::new();
    c.kube_dns("10.96.0.10");
    let checkout = c.deployment("shop", "checkout", 2, &[("http", 8080, "TCP")]);
    if idle_namespace {
        c.deployment("idle", "sleeper", 1, &[]);
    }
    let mut s = Scenario::new(c);
    let mut m = 0;
    let mut t = || {
        m += 3;
        m
    };
    for p in &checkout {
        s.flows.push(udp(*p, "10.96.0.10", 53, t()));
        for (addr, names) in [
            ("54.1.2.3", &["api.stripe.com"][..]),
            ("54.1.2.9", &["API.Stripe.com."][..]),
            ("35.190.0.5", &["hooks.slack.com"][..]),
            ("54.1.2.20", &[][..]),
        ] {
            let mut f = tcp(*p, addr, 443, t());
            f.dst.dns_names = names.iter().map(|n| (*n).to_owned()).collect();
            s.flows.push(f);
        }
    }
    s
}

/// 3-tier web app across namespaces: internet → frontend/web → backend/api (via Service, named
/// target port) → db-subnet outside the cluster; backend/worker → api; DNS via kube-dns;
/// kubelet probes from the pods' own nodes.
pub(crate) fn three_tier() -> Scenario {
    let mut c = Cluster::new();
    let dns = c.kube_dns("10.96.0.10");
    let web = c.deployment("frontend", "web", 2, &[("http", 8080, "TCP")]);
    let api = c.deployment("backend", "api", 2, &[("api", 9000, "TCP")]);
    let worker = c.deployment("backend", "worker", 1, &[]);
    c.service(
        "backend",
        "api",
        "10.96.0.20",
        serde_json::json!({"app": "api"}),
        &[(80, serde_json::json!("api"), "TCP")],
    );
    let mut s = Scenario::new(c);
    s.subnets = Subnets::new([("db-subnet".to_owned(), "10.0.2.0/24".parse().unwrap())]);
    let mut m = 0;
    let mut t = || {
        m += 7;
        m
    };
    for client in ["203.0.113.7", "203.0.113.9"] {
        for w in &web {
            s.flows.push(tcp(ip(client), &w.to_string(), 8080, t()));
        }
    }
    for w in &web {
        s.flows.push(udp(*w, "10.96.0.10", 53, t()));
        s.flows.push(tcp(*w, "10.96.0.20", 80, t()));
        // kubelet probe from the pod's own node: needs no rule
        let node = if w.to_string().starts_with("10.244.1.") {
            "192.168.1.10"
        } else {
            "192.168.1.11"
        };
        s.flows.push(tcp(ip(node), &w.to_string(), 8080, t()));
    }
    for a in &api {
        s.flows.push(udp(*a, "10.96.0.10", 53, t()));
        s.flows.push(tcp(*a, "10.0.2.10", 5432, t()));
    }
    s.flows.push(tcp(worker[0], "10.96.0.20", 80, t()));
    let _ = dns;
    s
}

/// A shop learning under enforcement: web → api (via its Service, `closed`) is legitimate; web
/// knocked 5 times on db:5432 (`attempted`, 2 packets each dropped by `shop/db-np`) and
/// 203.0.113.1 once on api:9000 (`attempted`, no drop seen). With `policies_in_force`, the
/// inventory holds the policies that denied the knocks (`shop/db-np`: db only from api;
/// `shop/api-np`: api only from web). Returns the scenario and the index of the knock on api.
pub(crate) fn knocked_shop(policies_in_force: bool) -> (Scenario, usize) {
    use netpol_observe_core::flow::{Directional, Drops, FlowState};
    let mut c = Cluster::new();
    let web = c.deployment("shop", "web", 2, &[("http", 8080, "TCP")]);
    let api = c.deployment("shop", "api", 1, &[("api", 9000, "TCP")]);
    let db = c.statefulset("shop", "db", 1, &[("pg", 5432, "TCP")]);
    c.service(
        "shop",
        "api",
        "10.96.0.20",
        json!({"app": "api"}),
        &[(80, json!("api"), "TCP")],
    );
    if policies_in_force {
        for (name, server, client, port) in
            [("db-np", "db", "api", 5432), ("api-np", "api", "web", 9000)]
        {
            c.objects.push(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": server}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": client}}}],
                                      "ports": [{"port": port, "protocol": "TCP"}]}]}
            }));
        }
    }
    let mut s = Scenario::new(c);
    let mut minute = 0;
    for w in &web {
        for _ in 0..3 {
            minute += 1;
            let mut f = tcp(*w, "10.96.0.20", 80, minute);
            f.state = Some(FlowState::Closed);
            f.packets = Some(Directional {
                sent: 6,
                received: 5,
            });
            s.flows.push(f);
        }
    }
    for _ in 0..5 {
        minute += 1;
        let mut f = tcp(web[0], &db[0].to_string(), 5432, minute);
        f.state = Some(FlowState::Attempted);
        f.packets = Some(Directional {
            sent: 2,
            received: 0,
        });
        f.drops = Some(Drops {
            count: 2,
            reason: Some("NETFILTER_DROP".into()),
            policy: Some("shop/db-np".into()),
        });
        s.flows.push(f);
    }
    minute += 1;
    let mut knock = tcp(ip("203.0.113.1"), &api[0].to_string(), 9000, minute);
    knock.state = Some(FlowState::Attempted);
    knock.packets = Some(Directional {
        sent: 3,
        received: 0,
    });
    s.flows.push(knock);
    let knock = s.flows.len() - 1;
    (s, knock)
}
