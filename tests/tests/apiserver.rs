//! The agent in a cluster: a real kube-apiserver and etcd on loopback
//! ([`netpol_observe_e2e::apiserver`]), `deploy/kubernetes/base`'s Namespace, ServiceAccount,
//! ClusterRole and ClusterRoleBinding applied to it, and the agent binary run in in-cluster mode
//! with exactly the DaemonSet's identity: a token minted for its ServiceAccount (TokenRequest),
//! the cluster CA and namespace bind-mounted at `/var/run/secrets/kubernetes.io/serviceaccount`
//! in the agent's own mount namespace, `KUBERNETES_SERVICE_HOST`/`PORT`, the DaemonSet's
//! arguments and the ConfigMap's files. Pods are network namespaces whose Pod objects (status,
//! node, owner references), ReplicaSets, Deployments, Services, EndpointSlices, Nodes and
//! NetworkPolicies are created through the API, as controllers would.
//!
//! Needs root and the two binaries (skipped with a message without them, failing under
//! `CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use netpol_observe_e2e::{
    apiserver::{DaemonSetAgent, base_objects, list, of_kind},
    http::{get, wait_for},
};

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netpol_observe_agent::agent::ObservedFlow;
use netpol_observe_e2e::{
    apiserver::{ApiServer, Binaries},
    netns::{self, Pod},
};
use serde_json::{Value, json};

/// How long a change made through the API may take to reach the verdicts of new flows (the
/// agent debounces snapshots by 0.5 s and sweeps every second here; the bound leaves room for a
/// loaded CI machine). Measured figures are printed.
const API_CHANGE_BOUND: Duration = Duration::from_secs(15);

/// A network-namespace pod plus its objects in the API.
struct Cluster {
    api: ApiServer,
    pods: Vec<Pod>,
    tag: &'static str,
    net: u8,
    nft_table: Option<String>,
}

impl Cluster {
    fn new(api: ApiServer, tag: &'static str, net: u8) -> Cluster {
        Cluster {
            api,
            pods: Vec::new(),
            tag,
            net,
            nft_table: None,
        }
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 79, self.net, 10 + i as u8)
    }

    /// A network namespace for pod slot `i` (routed veth `v<tag><i>`).
    fn netns(&mut self, i: usize) -> usize {
        let pod = Pod::routed(
            &format!("npo-{}-{i}", self.tag),
            &format!("v{}{i}", self.tag),
            self.ip(i),
            format!("fd79::{}:{i}", self.net).parse().unwrap(),
        )
        .unwrap();
        self.pods.push(pod);
        self.pods.len() - 1
    }

    /// The pattern of this test's host-side interfaces (pods may come later).
    fn interfaces(&self) -> String {
        format!("v{}*", self.tag)
    }

    fn apply(&self, v: Value) {
        self.api.apply(&v.to_string()).unwrap();
    }

    /// A Deployment `name` and its ReplicaSet `name-rs1` (owner references as the controllers
    /// set them), selector `app: name`.
    fn deployment(&self, ns: &str, name: &str) -> (String, String) {
        let labels = json!({"app": name});
        let template = json!({"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        self.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": labels}, "template": template}}));
        let uid = self
            .api
            .kubectl_ok(
                &[
                    "get",
                    "deployment",
                    name,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ],
                None,
            )
            .unwrap();
        let rs = format!("{name}-rs1");
        let mut rs_labels = labels;
        rs_labels["pod-template-hash"] = json!("rs1");
        self.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "namespace": ns, "labels": rs_labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": uid, "controller": true}]},
            "spec": {"selector": {"matchLabels": rs_labels},
                "template": {"metadata": {"labels": rs_labels},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}}}}));
        let rs_uid = self
            .api
            .kubectl_ok(
                &[
                    "get",
                    "replicaset",
                    &rs,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ],
                None,
            )
            .unwrap();
        (rs, rs_uid)
    }

    /// A Pod of ReplicaSet `rs` on node-1 holding the IP of slot `slot`, Running.
    fn pod(&self, ns: &str, name: &str, app: &str, rs: &(String, String), slot: usize) {
        self.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns,
                "labels": {"app": app, "pod-template-hash": "rs1"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.0,
                    "uid": rs.1, "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}]}]}}));
        let ip = self.ip(slot).to_string();
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.api
            .kubectl_ok(
                &[
                    "patch",
                    "pod",
                    name,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ],
                None,
            )
            .unwrap();
    }

    /// kube-proxy's part for one Service port: DNAT of `vip:port` to the pod of `slot`:8080.
    fn dnat(&mut self, vip: &str, port: u16, slot: usize) {
        let table = format!("npo_{}", self.tag);
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .stderr(Stdio::null())
            .status();
        let rules = format!(
            "table ip {table} {{\n chain pre {{\n  type nat hook prerouting priority -100; policy accept;\n  \
             ip daddr {vip} tcp dport {port} dnat to {}:8080\n }}\n}}\n",
            self.ip(slot)
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft: {rules}");
        self.nft_table = Some(table);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = &self.nft_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", t])
                .status();
        }
        if std::thread::panicking() {
            for log in ["logs/kube-apiserver.log"] {
                let text = std::fs::read_to_string(self.api.dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- last lines of {log}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Applies the base's Namespace, ServiceAccount, ClusterRole (through `edit_role`) and
/// ClusterRoleBinding, mints a token for the ServiceAccount and starts the agent with it as the
/// DaemonSet does (its arguments, the ConfigMap's files), on the test's interfaces.
fn start_agent(
    c: &Cluster,
    dir: &Path,
    edit_role: impl FnOnce(&mut Value),
    output: &Path,
) -> DaemonSetAgent {
    let objects = base_objects();
    let mut role = (*of_kind(&objects, &["ClusterRole"])[0]).clone();
    edit_role(&mut role);
    let mut rbac = of_kind(
        &objects,
        &["Namespace", "ServiceAccount", "ClusterRoleBinding"],
    );
    rbac.push(&role);
    c.api.apply(&list(&rbac)).unwrap();

    c.api.start_daemonset_agent(
        dir,
        &[
            // Test overrides: only this test's interfaces, fast sweeps, the flows at exit, and
            // the flows API open on loopback (its authentication is tests/tests/api_auth.rs's).
            "--api-auth=none",
            "--sweep-interval=1s",
            "--output=jsonl",
            "--interfaces",
            &c.interfaces(),
        ],
        "info,kube=debug",
        Stdio::from(File::create(output).unwrap()),
    )
}

fn flows(agent: &DaemonSetAgent) -> Vec<ObservedFlow> {
    let (code, body) = get(agent.listen, "/api/v1/flows").unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// One TCP exchange from pod `from` to `dst`; the server runs in pod `server`. Returns the
/// client's source port, which names the flow.
fn connect(c: &Cluster, from: usize, server: usize, dst: SocketAddr) -> u16 {
    let bind = SocketAddr::from((c.ip(server), 8080));
    let listener = c.pods[server].run(move || TcpListener::bind(bind).unwrap());
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"world").unwrap();
    });
    let port = c.pods[from].run(move || {
        // Generous: a loaded machine may be slow, the first SYN may wait for ARP.
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(20)).unwrap();
        let port = s.local_addr().unwrap().port();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        port
    });
    srv.join().unwrap();
    port
}

/// The flow whose client port is `port`, once the agent reports it.
fn flow_of(agent: &DaemonSetAgent, port: u16) -> ObservedFlow {
    wait_for(
        &format!("the flow from port {port}"),
        Duration::from_secs(60),
        || {
            flows(agent)
                .into_iter()
                .find(|f| f.flow.src.port == Some(port) && f.flow.dst.port.is_some())
        },
    )
}

fn workload(f: &ObservedFlow, src: bool) -> String {
    let ep = if src { &f.flow.src } else { &f.flow.dst };
    ep.workload
        .as_ref()
        .map(|w| format!("{}/{}", w.kind, w.name))
        .unwrap_or_default()
}

fn verdict(f: &ObservedFlow) -> Value {
    serde_json::to_value(f).unwrap()["verdict"].clone()
}

/// The ingress side of a flow's verdict: `not-isolated`, `allowed` or `denied`.
fn ingress(f: &ObservedFlow) -> String {
    verdict(f)["ingress"]["result"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

fn ready(agent: &DaemonSetAgent) -> Option<(u16, String)> {
    get(agent.listen, "/readyz")
}

fn metric(agent: &DaemonSetAgent, line_start: &str) -> Option<f64> {
    let (_, body) = get(agent.listen, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The namespace `shop` with its default ServiceAccount (no controller creates it here) and
/// the node.
fn namespace_and_node(c: &Cluster) {
    c.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"team": "web"}}}));
    c.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "shop"}}));
    c.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    );
}

/// `shop/api-ingress`: ingress to `app: api` on 8080 only from pods matching `labels`.
fn policy_api_from(labels: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "api-ingress", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": labels}}],
                "ports": [{"port": 8080, "protocol": "TCP"}]}]}})
}

/// New connections until one is judged `want` on its ingress side; the time it took.
fn until_ingress(
    c: &Cluster,
    agent: &DaemonSetAgent,
    from: usize,
    to: usize,
    want: &str,
) -> Duration {
    let start = Instant::now();
    let dst = SocketAddr::from((c.ip(to), 8080));
    loop {
        let f = flow_of(agent, connect(c, from, to, dst));
        let got = ingress(&f);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < API_CHANGE_BOUND,
            "new flows still judged {got}, not {want}, {:?} after the change",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// One scenario: each step changes the API server the one agent follows and checks what it
// made of the steps before.
#[test]
fn agent_in_cluster_follows_the_api_server() {
    let test = "agent_in_cluster_follows_the_api_server";
    if !netpol_observe_e2e::require_root(test) {
        return;
    }
    let Some(bins) = Binaries::find(test) else {
        return;
    };
    let api = ApiServer::start(&bins, "agent").unwrap();
    let mut c = Cluster::new(api, "ka", 1);
    let (web_i, api_i, late_i) = (c.netns(0), c.netns(1), c.netns(2));
    namespace_and_node(&c);
    let web_rs = c.deployment("shop", "web");
    let api_rs = c.deployment("shop", "api");
    c.pod("shop", "web-rs1-a", "web", &web_rs, 0);
    c.pod("shop", "api-rs1-a", "api", &api_rs, 1);
    c.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.50.10", "selector": {"app": "api"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}));
    c.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "api-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "api"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [c.ip(1).to_string()], "conditions": {"ready": true},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "api-rs1-a"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    c.dnat("10.96.50.10", 80, api_i);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flows.jsonl");
    let mut agent = start_agent(&c, dir.path(), |_| {}, &out);

    // Ready once every watched resource is listed, with the DaemonSet's RBAC (no 403).
    let t = Instant::now();
    wait_for("/readyz 200", Duration::from_secs(60), || {
        ready(&agent).filter(|(code, _)| *code == 200)
    });
    eprintln!("ready {:?} after start", t.elapsed());
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        !log.contains("is forbidden") && !log.contains("Forbidden"),
        "{log}"
    );
    for r in [
        "namespaces",
        "pods",
        "services",
        "nodes",
        "discovery.k8s.io/endpointslices",
        "networking.k8s.io/networkpolicies",
        "apps/replicasets",
        "batch/jobs",
        // No CRD in this API server: a 404, taken as none.
        "policy.networking.k8s.io/clusternetworkpolicies",
    ] {
        let line = format!("netpol_observe_inventory_synced{{resource=\"{r}\"}}");
        assert_eq!(metric(&agent, &line), Some(1.0), "{line}");
    }

    // Real traffic, attributed to workloads and the Service.
    let direct = flow_of(
        &agent,
        connect(&c, web_i, api_i, SocketAddr::from((c.ip(api_i), 8080))),
    );
    assert_eq!(direct.flow.src.pod.as_deref(), Some("web-rs1-a"));
    assert_eq!(workload(&direct, true), "Deployment/web");
    assert_eq!(direct.flow.dst.pod.as_deref(), Some("api-rs1-a"));
    assert_eq!(workload(&direct, false), "Deployment/api");
    assert_eq!(direct.flow.src.namespace.as_deref(), Some("shop"));
    assert_eq!(direct.flow.node.as_deref(), Some("node-1"));
    assert_eq!(ingress(&direct), "not-isolated");
    let via_svc = flow_of(
        &agent,
        connect(&c, web_i, api_i, "10.96.50.10:80".parse().unwrap()),
    );
    let svc = via_svc
        .flow
        .dst
        .service
        .as_ref()
        .expect("service attributed");
    assert_eq!((svc.namespace.as_str(), svc.name.as_str()), ("shop", "api"));
    assert_eq!(via_svc.flow.dst.pod.as_deref(), Some("api-rs1-a"));
    assert_eq!(workload(&via_svc, true), "Deployment/web");

    // A NetworkPolicy created, changed and deleted through the API.
    c.apply(policy_api_from(json!({"app": "nobody"})));
    let d = until_ingress(&c, &agent, web_i, api_i, "denied");
    eprintln!("policy created: new flows denied after {d:?}");
    c.apply(policy_api_from(json!({"app": "web"})));
    let d = until_ingress(&c, &agent, web_i, api_i, "allowed");
    eprintln!("policy changed: new flows allowed after {d:?}");

    // A relabelled pod: a policy allowing `tier: front` lets web in once web has the label.
    c.apply(policy_api_from(json!({"tier": "front"})));
    until_ingress(&c, &agent, web_i, api_i, "denied");
    c.api
        .kubectl_ok(
            &["label", "pod", "web-rs1-a", "-n", "shop", "tier=front"],
            None,
        )
        .unwrap();
    let d = until_ingress(&c, &agent, web_i, api_i, "allowed");
    eprintln!("pod relabelled: new flows allowed after {d:?}");
    c.api
        .kubectl_ok(
            &["delete", "networkpolicy", "api-ingress", "-n", "shop"],
            None,
        )
        .unwrap();
    let d = until_ingress(&c, &agent, web_i, api_i, "not-isolated");
    eprintln!("policy deleted: new flows not isolated after {d:?}");

    let dst = SocketAddr::from((c.ip(api_i), 8080));
    // IP reuse: api's pod is deleted and a pod of another workload gets its IP. Flows seen
    // before stay with the old pod, new ones go to the new pod.
    let before = flow_of(&agent, connect(&c, web_i, api_i, dst));
    assert_eq!(before.flow.dst.pod.as_deref(), Some("api-rs1-a"));
    c.api
        .kubectl_ok(
            &[
                "delete",
                "pod",
                "api-rs1-a",
                "-n",
                "shop",
                "--grace-period=0",
                "--force",
            ],
            None,
        )
        .unwrap();
    let db_rs = c.deployment("shop", "db");
    c.pod("shop", "db-rs1-a", "db", &db_rs, 1);
    let reused = wait_for("the reused IP attributed to db", API_CHANGE_BOUND, || {
        let f = flow_of(&agent, connect(&c, web_i, api_i, dst));
        (f.flow.dst.pod.as_deref() == Some("db-rs1-a")).then_some(f)
    });
    assert_eq!(workload(&reused, false), "Deployment/db");
    let all = flows(&agent);
    let old = all
        .iter()
        .find(|f| f.flow.src.port == before.flow.src.port)
        .unwrap();
    assert_eq!(old.flow.dst.pod.as_deref(), Some("api-rs1-a"));
    assert_eq!(workload(old, false), "Deployment/api");

    // The API server stops: flows are still collected and served, /readyz says why.
    c.api.stop_apiserver();
    let (_, why) = wait_for(
        "/readyz 503 during the outage",
        Duration::from_secs(60),
        || ready(&agent).filter(|(code, _)| *code == 503),
    );
    assert!(why.contains("API server watches failing"), "{why}");
    eprintln!("during the outage /readyz says: {why}");
    let during = flow_of(&agent, connect(&c, web_i, api_i, dst));
    assert_eq!(during.flow.dst.pod.as_deref(), Some("db-rs1-a"));
    assert!(
        metric(&agent, "netpol_observe_flows_total").is_some(),
        "/metrics is served during the outage"
    );
    assert_eq!(
        metric(&agent, "netpol_observe_inventory_synced{resource=\"pods\"}"),
        Some(0.0)
    );

    // Restarted: the agent resyncs by itself, keeps what it collected, sees new objects.
    c.api.start_apiserver().unwrap();
    c.api.wait_ready().unwrap();
    let t = Instant::now();
    wait_for(
        "/readyz 200 after the restart",
        Duration::from_secs(90),
        || ready(&agent).filter(|(code, _)| *code == 200),
    );
    eprintln!("ready again {:?} after the API server", t.elapsed());
    let late_rs = c.deployment("shop", "late");
    c.pod("shop", "late-rs1-a", "late", &late_rs, late_i);
    let late = wait_for(
        "a pod created after the restart attributed",
        Duration::from_secs(90),
        || {
            let f = flow_of(
                &agent,
                connect(&c, web_i, late_i, SocketAddr::from((c.ip(late_i), 8080))),
            );
            (f.flow.dst.pod.as_deref() == Some("late-rs1-a")).then_some(f)
        },
    );
    assert_eq!(workload(&late, false), "Deployment/late");
    assert!(
        flows(&agent)
            .iter()
            .any(|f| f.flow.src.port == during.flow.src.port),
        "the flow collected during the outage is kept"
    );

    // SIGTERM: a clean exit, every flow in the final output, nothing left attached.
    let mut child = agent.child.take().unwrap();
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("the agent to exit", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    eprintln!("exited {:?} after SIGTERM", t.elapsed());
    assert!(status.success(), "{status}");
    let final_flows: Vec<ObservedFlow> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for port in [
        direct.flow.src.port,
        during.flow.src.port,
        late.flow.src.port,
    ] {
        assert!(
            final_flows.iter().any(|f| f.flow.src.port == port),
            "final output lacks the flow from port {port:?}"
        );
    }
    for p in &c.pods {
        assert_eq!(netns::attachments(&p.host_if).unwrap(), "", "{}", p.host_if);
    }
}

#[test]
fn agent_with_a_role_missing_a_resource_names_it_and_stays_unready() {
    let test = "agent_with_a_role_missing_a_resource_names_it_and_stays_unready";
    if !netpol_observe_e2e::require_root(test) {
        return;
    }
    let Some(bins) = Binaries::find(test) else {
        return;
    };
    let api = ApiServer::start(&bins, "rbac").unwrap();
    let c = Cluster::new(api, "kr", 2);
    namespace_and_node(&c);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flows.jsonl");
    // The ClusterRole without pods.
    let agent = start_agent(
        &c,
        dir.path(),
        |role| {
            for rule in role["rules"].as_array_mut().unwrap() {
                if let Some(r) = rule["resources"].as_array_mut() {
                    r.retain(|x| x != "pods");
                }
            }
        },
        &out,
    );
    let (_, why) = wait_for(
        "/readyz naming pods and list",
        Duration::from_secs(60),
        || {
            ready(&agent).filter(|(code, body)| {
                *code == 503 && body.contains("cannot list resource \"pods\"")
            })
        },
    );
    eprintln!("/readyz: {why}");
    assert!(why.contains("pods"), "{why}");
    // It stays so (the watch keeps failing, the agent keeps running and answering).
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let (code, _) = ready(&agent).unwrap();
        assert_eq!(code, 503);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(get(agent.listen, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(
        metric(&agent, "netpol_observe_inventory_synced{resource=\"pods\"}"),
        Some(0.0)
    );
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");

    // The role fixed: ready without a restart.
    let objects = base_objects();
    c.api
        .apply(&of_kind(&objects, &["ClusterRole"])[0].to_string())
        .unwrap();
    wait_for(
        "/readyz 200 once pods may be listed",
        Duration::from_secs(90),
        || ready(&agent).filter(|(code, _)| *code == 200),
    );
}
