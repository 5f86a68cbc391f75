//! The agent's API in a cluster: who may read what. A real kube-apiserver and etcd on loopback
//! ([`netpol_observe_e2e::apiserver`]), `deploy/kubernetes/base`'s Namespace, ServiceAccount,
//! ClusterRoles and ClusterRoleBinding applied to it, and the agent binary run in in-cluster
//! mode exactly as the DaemonSet runs it (its arguments, the ConfigMap's files, its
//! ServiceAccount's token bind-mounted where a pod has it), on a loopback port.
//!
//! It proves: `/metrics`, `/healthz`, `/readyz` answer without a token; `/api/v1/flows` answers
//! `401` without a token, with a forged one and with a token not minted for the agent's
//! audience; `403` to a ServiceAccount not bound to `netpol-observe-reader`; `200` with the
//! flows to one that is (and to the other once bound, a refusal being cached only briefly);
//! `netpol-observe flows`/`recommend --agent` send the token (`--token-file`, the kubeconfig's);
//! a client that sends half a request head is cut off at the header read timeout.
//!
//! Needs root and the two binaries (skipped with a message without them, failing under
//! `CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use netpol_observe_e2e::{
    apiserver::{DaemonSetAgent, base_objects, list, of_kind},
    http::{request as get, wait_for},
};

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netpol_observe_agent::agent::ObservedFlow;
use netpol_observe_e2e::{
    apiserver::{ApiServer, Binaries},
    netns::Pod,
};
use serde_json::json;

/// The audience the shipped ConfigMap makes the agent require (`apiTokenAudiences`).
const AUDIENCE: &str = "netpol-observe";

/// The agent's header read timeout (`http::server::ServerLimits`'s default) and the margin a
/// loaded machine gets on top.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(4);

/// Applies the base's RBAC objects (both ClusterRoles), mints the agent's token and starts the
/// agent as the DaemonSet does (its arguments, the ConfigMap's files, the ServiceAccount files
/// bind-mounted in its own mount namespace), listening on a free loopback port, attached to
/// `interfaces`.
fn start_agent(api: &ApiServer, dir: &Path, interfaces: &str) -> DaemonSetAgent {
    let objects = base_objects();
    let rbac = of_kind(
        &objects,
        &[
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        ],
    );
    assert!(
        rbac.iter()
            .any(|o| o["metadata"]["name"] == "netpol-observe-reader"),
        "the base ships the reader role"
    );
    api.apply(&list(&rbac)).unwrap();

    api.start_daemonset_agent(
        dir,
        &[
            "--sweep-interval=1s",
            "--output=none",
            "--interfaces",
            interfaces,
        ],
        "info,netpol_observe_agent::http=debug",
        Stdio::null(),
    )
}

fn flows(body: &str) -> Vec<ObservedFlow> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// One TCP exchange from pod `from` to pod `to`:8080; the client's source port.
fn connect(pods: &[Pod], ips: &[Ipv4Addr], from: usize, to: usize) -> u16 {
    let bind = SocketAddr::from((ips[to], 8080));
    let listener = pods[to].run(move || TcpListener::bind(bind).unwrap());
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"world").unwrap();
    });
    let port = pods[from].run(move || {
        let mut s = TcpStream::connect_timeout(&bind, Duration::from_secs(20)).unwrap();
        let port = s.local_addr().unwrap().port();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        port
    });
    srv.join().unwrap();
    port
}

/// `netpol-observe <args>` with only `env` set (besides PATH): exit code, stdout, stderr.
fn cli(args: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(netpol_observe_e2e::bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// One scenario: each step depends on the previous one's state (RBAC bindings, cached
// refusals, one agent).
#[test]
fn api_needs_an_authorised_token_and_metrics_stay_open() {
    let test = "api_needs_an_authorised_token_and_metrics_stay_open";
    if !netpol_observe_e2e::require_root(test) {
        return;
    }
    let Some(bins) = Binaries::find(test) else {
        return;
    };
    let api = ApiServer::start(&bins, "apiauth").unwrap();
    let ips = [Ipv4Addr::new(10, 79, 9, 10), Ipv4Addr::new(10, 79, 9, 11)];
    let pods: Vec<Pod> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            Pod::routed(
                &format!("npo-au-{i}"),
                &format!("vau{i}"),
                *ip,
                format!("fd79::9:{i}").parse().unwrap(),
            )
            .unwrap()
        })
        .collect();
    // Two callers: `reader`, bound to the shipped reader role, and `stranger`, not bound.
    api.apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "readers"}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "reader", "namespace": "readers"}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "stranger", "namespace": "readers"}},
        ]})
        .to_string(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&api, dir.path(), "vau*");
    api.apply(
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "readers-read-flows"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "netpol-observe-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "readers"}]})
        .to_string(),
    )
    .unwrap();
    let token = |sa: &str, audience: Option<&str>| {
        let mut args = vec!["create", "token", sa, "-n", "readers", "--duration=1h"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        api.kubectl_ok(&args, None).unwrap().trim().to_owned()
    };
    let reader = token("reader", Some(AUDIENCE));
    let stranger = token("stranger", Some(AUDIENCE));
    let reader_for_the_api_server = token("reader", None);

    // Probes and metrics: open.
    let a = wait_for("/readyz 200", Duration::from_secs(60), || {
        get(agent.listen, "/readyz", None).filter(|a| a.status == 200)
    });
    assert_eq!(a.body, "ready\n");
    assert_eq!(get(agent.listen, "/healthz", None).unwrap().status, 200);
    let m = get(agent.listen, "/metrics", None).unwrap();
    assert_eq!(m.status, 200);
    assert!(m.body.contains("netpol_observe_"), "{}", m.body);

    // A flow to read.
    let port = connect(&pods, &ips, 0, 1);
    let seen = wait_for(
        "the flow, read with the reader's token",
        Duration::from_secs(60),
        || {
            let a = get(agent.listen, "/api/v1/flows", Some(&reader))?;
            assert_eq!(a.status, 200, "{}", a.body);
            assert!(
                a.head.contains("content-type: application/x-ndjson"),
                "{}",
                a.head
            );
            assert!(
                a.head.contains("x-netpol-observe-truncated: false"),
                "{}",
                a.head
            );
            flows(&a.body)
                .into_iter()
                .find(|f| f.flow.src.port == Some(port) && f.flow.dst.ip == ips[1])
        },
    );
    assert_eq!(seen.flow.src.ip, ips[0]);

    // No token, a forged one, one for the API server's audience: 401.
    let a = get(agent.listen, "/api/v1/flows", None).unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.head.contains("www-authenticate: bearer"), "{}", a.head);
    assert!(
        !a.body.contains(&ips[0].to_string()),
        "no flow leaks: {}",
        a.body
    );
    let a = get(agent.listen, "/api/v1/flows", Some("forged.token.value")).unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    let a = get(
        agent.listen,
        "/api/v1/flows",
        Some(&reader_for_the_api_server),
    )
    .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains(AUDIENCE), "{}", a.body);
    assert_eq!(
        get(agent.listen, "/api/v1/recommendations", None)
            .unwrap()
            .status,
        401
    );

    // An authenticated ServiceAccount without the binding: 403, naming it.
    let a = get(agent.listen, "/api/v1/flows", Some(&stranger)).unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("system:serviceaccount:readers:stranger")
            && a.body.contains("netpol-observe-reader"),
        "{}",
        a.body
    );
    assert!(
        !a.body.contains(&ips[0].to_string()),
        "no flow leaks: {}",
        a.body
    );
    let a = get(agent.listen, "/api/v1/recommendations", Some(&stranger)).unwrap();
    assert_eq!(a.status, 403, "{}", a.body);

    // The reader also gets recommendations.
    let a = get(agent.listen, "/api/v1/recommendations", Some(&reader)).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.head.contains("content-type: application/yaml"),
        "{}",
        a.head
    );

    // Bound later, the stranger reads once its cached refusal expires (10 s).
    api.apply(
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "stranger-reads-flows"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "netpol-observe-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "stranger", "namespace": "readers"}]})
        .to_string(),
    )
    .unwrap();
    let t = Instant::now();
    wait_for(
        "the stranger, once bound, allowed",
        Duration::from_secs(30),
        || get(agent.listen, "/api/v1/flows", Some(&stranger)).filter(|a| a.status == 200),
    );
    eprintln!("allowed {:?} after the binding", t.elapsed());

    // The clients send the token: --token-file, or the kubeconfig's; without one they say how
    // to get one.
    let url = format!("http://{}", agent.listen);
    let token_file = dir.path().join("reader.token");
    std::fs::write(&token_file, format!("{reader}\n")).unwrap();
    let home = dir.path();
    let (code, out, err) = cli(
        &[
            "flows",
            "--agent",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--output",
            "jsonl",
        ],
        &[("HOME", home)],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        flows(&out).iter().any(|f| f.flow.src.port == Some(port)),
        "{out}"
    );
    let (code, _, err) = cli(&["flows", "--agent", &url], &[("HOME", home)]);
    assert_ne!(code, Some(0));
    assert!(err.contains("401") && err.contains("--token-file"), "{err}");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: reader\n  \
             user:\n    token: {reader}\ncontexts:\n- name: x\n  context: {{cluster: c, user: \
             reader}}\ncurrent-context: x\n",
            api.port,
            api.ca().display()
        ),
    )
    .unwrap();
    let (code, out, err) = cli(
        &["flows", "--agent", &url, "--output", "jsonl"],
        &[("HOME", home), ("KUBECONFIG", &kubeconfig)],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!flows(&out).is_empty(), "{out}");
    let (code, out, err) = cli(
        &[
            "recommend",
            "--agent",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[("HOME", home)],
    );
    assert_eq!(code, Some(0), "{err}");
    let _ = out;

    // A client that sends half a request head is cut off at the header read timeout.
    let mut slow = TcpStream::connect(agent.listen).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let t = Instant::now();
    write!(
        slow,
        "GET /api/v1/flows HTTP/1.1\r\nHost: {}\r\nAuthorization: Bear",
        agent.listen
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    let took = t.elapsed();
    eprintln!(
        "half a header: closed after {took:?} ({:?})",
        String::from_utf8_lossy(&got).lines().next()
    );
    assert!(
        took < HEADER_TIMEOUT + MARGIN,
        "a slow client held the connection {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(&ips[0].to_string()),
        "no flows to a half request"
    );

    // Nothing the checks needed was forbidden to the agent itself.
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(!log.contains("cannot check an API request"), "{log}");
}
