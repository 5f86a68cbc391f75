//! The agent on a real kernel: network namespaces as pods (routed veths, as Calico does), an
//! inventory file written by the test, the agent binary in standalone mode, real traffic, nftables
//! drops, and a real Prometheus server scraping it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use netpol_observe_e2e::{
    http::{free_port, get},
    netns,
};

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netpol_observe_agent::agent::{FlowId, ObservedFlow};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Pods as network namespaces with routed veths ([`netns::Pod::routed`], which also turns on
/// forwarding); removes everything on drop (also on panic).
struct Pods {
    tag: String,
    net: u8,
    names: Vec<String>,
    pods: Vec<netns::Pod>,
    nft_tables: Vec<String>,
}

impl Pods {
    /// `tag`: ≤ 6 characters unique to the test; `net`: the third octet of 10.78.net.0/24.
    fn new(tag: &str, net: u8) -> Pods {
        Pods {
            tag: tag.to_owned(),
            net,
            names: Vec::new(),
            pods: Vec::new(),
            nft_tables: Vec::new(),
        }
    }

    fn veth(&self, i: usize) -> String {
        format!("vn{}{i}", self.tag)
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.net, 10 + i as u8)
    }

    /// Creates pod `i` named `name` (an earlier aborted run's namespace and veth of the same
    /// names are removed first).
    fn add(&mut self, name: &str) -> usize {
        let i = self.names.len();
        let (ns, veth) = (format!("npo-{}-{i}", self.tag), self.veth(i));
        let v6 = Ipv6Addr::new(0xfd00, 78, u16::from(self.net), 0, 0, 0, 0, 10 + i as u16);
        let pod = netns::Pod::routed(&ns, &veth, self.ip(i), v6)
            .unwrap_or_else(|e| panic!("creating pod {name} ({ns}): {e:#}"));
        // No reverse-path filtering on the host side, as a routed CNI configures it.
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{veth}.rp_filter=0"),
        ]);
        self.names.push(name.to_owned());
        self.pods.push(pod);
        i
    }

    fn interfaces(&self) -> Vec<String> {
        (0..self.names.len()).map(|i| self.veth(i)).collect()
    }

    /// An nftables table (named for the test) dropping forwarded UDP from pod `from` to pod
    /// `to` on `port`.
    fn drop_udp(&mut self, from: usize, to: usize, port: u16) {
        let table = format!("npo_{}_{}", self.tag, self.nft_tables.len());
        let rules = format!(
            "table ip {table} {{\n chain npo_forward {{\n  type filter hook forward priority 0; policy accept;\n  \
             ip saddr {} ip daddr {} udp dport {port} drop\n }}\n}}\n",
            self.ip(from),
            self.ip(to)
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
        self.nft_tables.push(table);
    }

    /// Runs `f` on a thread inside pod `i`'s network namespace (sockets stay in it).
    fn run_in<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.pods[i].run(f)
    }

    /// The inventory: a Namespace `ns` and one bare Pod per pod (labels `app: <name>`) on node
    /// `node`, plus `extra` YAML documents.
    fn inventory(&self, ns: &str, node: &str, extra: &str) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: t}}}}\n"
        );
        for (i, name) in self.names.iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
                 spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n\
                 status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
                ip = self.ip(i)
            ));
        }
        y.push_str(extra);
        y
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for t in &self.nft_tables {
            sh_quiet(&["nft", "delete", "table", "ip", t]);
        }
        // The pods (namespaces, veths, host routes) remove themselves.
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn start_agent(dir: &Path, pods: &Pods, listen: SocketAddr, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(netpol_observe_e2e::bin());
    cmd.arg("agent")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--inventory")
        .arg(dir.join("inventory.yaml"))
        .arg("--node-name")
        .arg("node-1")
        .arg("--sweep-interval")
        .arg("1s")
        .arg("--inventory-poll-interval")
        .arg("1s")
        .arg("--output")
        .arg("none")
        .arg("--interfaces")
        .args(pods.interfaces())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("agent.log")).unwrap());
    let child = Proc(cmd.spawn().unwrap());
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        matches!(get(listen, "/readyz"), Some((200, _)))
    });
    child
}

fn flows(listen: SocketAddr, query: &str) -> Vec<ObservedFlow> {
    let (code, body) = get(listen, &format!("/api/v1/flows{query}")).unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A multi-document YAML stream parsed into NetworkPolicies (panics on anything else).
fn network_policies(yaml: &str) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
    serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

/// `(src pod, dst pod, dst port, protocol)` → flow.
fn by_pair(flows: &[ObservedFlow]) -> BTreeMap<(String, String, u16, String), ObservedFlow> {
    flows
        .iter()
        .map(|f| {
            (
                (
                    f.flow.src.pod.clone().unwrap_or_default(),
                    f.flow.dst.pod.clone().unwrap_or_default(),
                    f.flow.dst.port.unwrap_or(0),
                    f.flow.protocol.as_str().to_owned(),
                ),
                f.clone(),
            )
        })
        .collect()
}

fn tcp_exchange(pods: &Pods, from: usize, to: usize, port: u16) {
    let dst = SocketAddr::from((pods.ip(to), port));
    let server = {
        let listener = pods.run_in(to, move || TcpListener::bind(dst).unwrap());
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            c.write_all(b"world").unwrap();
        })
    };
    pods.run_in(from, move || {
        // Generous under load: a connection between namespaces, not a timing claim.
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(20)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
    });
    server.join().unwrap();
}

fn udp_send(pods: &Pods, from: usize, to: usize, port: u16, n: usize) {
    let dst = SocketAddr::from((pods.ip(to), port));
    pods.run_in(from, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..n {
            s.send_to(b"ping", dst).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

const POLICY_C: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-b, namespace: shop}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 9090, protocol: UDP}]
";

// One scenario: each step reads the flows, drops and metrics the steps before left in the
// one running agent.
#[test]
fn standalone_agent_serves_attributed_flows_verdicts_and_drops() {
    if !netpol_observe_e2e::require_root(
        "standalone_agent_serves_attributed_flows_verdicts_and_drops",
    ) {
        return;
    }
    let mut pods = Pods::new("ag1", 1);
    let (a, b, c, d) = (pods.add("a"), pods.add("b"), pods.add("c"), pods.add("d"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        pods.inventory("shop", "node-1", POLICY_C),
    )
    .unwrap();
    // Drafts: deny every ingress to b (what would it break?).
    std::fs::write(
        dir.path().join("staged.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-deny, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    pods.drop_udp(a, c, 9090);
    pods.drop_udp(b, d, 9091);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let staged = dir.path().join("staged.yaml");
    let mut agent = start_agent(
        dir.path(),
        &pods,
        listen,
        &["--staged-policies", staged.to_str().unwrap()],
    );

    tcp_exchange(&pods, a, b, 8080); // allowed (b not isolated); the draft would deny it
    udp_send(&pods, b, c, 9090, 2); // allowed by shop/c-from-b
    udp_send(&pods, a, c, 9090, 5); // denied by shop/c-from-b, dropped by nftables
    udp_send(&pods, b, d, 9091, 3); // not isolated, dropped by nftables: no policy explains it

    let mut got;
    let start = Instant::now();
    loop {
        got = by_pair(&flows(listen, ""));
        let drops = |k: (&str, &str, u16, &str)| {
            got.get(&(k.0.into(), k.1.into(), k.2, k.3.into()))
                .and_then(|f| f.flow.drops.as_ref().map(|d| d.count))
        };
        let sent = |k: (&str, &str, u16, &str)| {
            got.get(&(k.0.into(), k.1.into(), k.2, k.3.into()))
                .and_then(|f| f.flow.packets.map(|p| p.sent))
        };
        if got.len() == 4
            && sent(("b", "c", 9090, "UDP")) == Some(2)
            && sent(("a", "c", 9090, "UDP")) == Some(5)
            && drops(("a", "c", 9090, "UDP")) == Some(5)
            && drops(("b", "d", 9091, "UDP")) == Some(3)
        {
            break;
        }
        let summary: Vec<String> = got
            .values()
            .map(|f| {
                format!(
                    "{:?} packets={:?} drops={:?}",
                    FlowId::of(&f.flow),
                    f.flow.packets,
                    f.flow.drops
                )
            })
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the four flows with their drops; got:\n{}\nagent log:\n{}",
            summary.join("\n"),
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let key =
        |s: &str, d: &str, p: u16, proto: &str| (s.to_owned(), d.to_owned(), p, proto.to_owned());
    let keys: Vec<_> = got.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            key("a", "b", 8080, "TCP"),
            key("a", "c", 9090, "UDP"),
            key("b", "c", 9090, "UDP"),
            key("b", "d", 9091, "UDP"),
        ]
    );
    let ab = &got[&key("a", "b", 8080, "TCP")];
    assert_eq!(ab.flow.src.namespace.as_deref(), Some("shop"));
    assert_eq!(ab.flow.src.ip, std::net::IpAddr::from(pods.ip(a)));
    assert_eq!(ab.flow.dst.workload.as_ref().unwrap().kind, "Pod");
    assert_eq!(ab.flow.node.as_deref(), Some("node-1"));
    let v = ab.verdict.as_ref().unwrap();
    assert!(v.allowed);
    let staged_v = ab.staged_verdict.as_ref().unwrap();
    assert!(!staged_v.allowed);
    assert_eq!(staged_v.ingress.policies, vec!["shop/b-deny"]);

    let bc = &got[&key("b", "c", 9090, "UDP")];
    let v = bc.verdict.as_ref().unwrap();
    assert!(v.allowed);
    assert_eq!(v.ingress.policies, vec!["shop/c-from-b"]);
    assert_eq!(bc.flow.packets.unwrap().sent, 2);

    let ac = &got[&key("a", "c", 9090, "UDP")];
    let v = ac.verdict.as_ref().unwrap();
    assert!(!v.allowed);
    assert_eq!(v.ingress.policies, vec!["shop/c-from-b"]);
    let drops = ac.flow.drops.as_ref().unwrap();
    assert_eq!(drops.count, 5);
    assert_eq!(drops.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(drops.policy.as_deref(), Some("shop/c-from-b"));

    let bd = &got[&key("b", "d", 9091, "UDP")];
    assert!(bd.verdict.as_ref().unwrap().allowed);
    let drops = bd.flow.drops.as_ref().unwrap();
    assert_eq!((drops.count, drops.policy.as_deref()), (3, Some("unknown")));

    // Filters.
    let denied = flows(listen, "?verdict=denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].flow.src.pod.as_deref(), Some("a"));
    assert_eq!(flows(listen, "?workload=d").len(), 1);
    assert_eq!(flows(listen, "?namespace=elsewhere").len(), 0);
    assert_eq!(flows(listen, "?verdict=staged-denied").len(), 1);
    assert_eq!(flows(listen, "?since=2999-01-01T00:00:00Z").len(), 0);
    let (code, body) = get(listen, "/api/v1/flows?since=soon").unwrap();
    assert_eq!(code, 400, "{body}");

    // Metrics.
    let (_, m) = get(listen, "/metrics").unwrap();
    let peers = |s: &str, d: &str, port: u16, proto: &str| {
        format!(
            "src_namespace=\"shop\",src_kind=\"Pod\",src_workload=\"{s}\",dst_namespace=\"shop\",dst_kind=\"Pod\",dst_workload=\"{d}\",dst_port=\"{port}\",protocol=\"{proto}\""
        )
    };
    for line in [
        format!("netpol_observe_drops_total{{{},reason=\"NETFILTER_DROP\",policy=\"shop/c-from-b\"}} 5", peers("a", "c", 9090, "UDP")),
        format!("netpol_observe_drops_total{{{},reason=\"NETFILTER_DROP\",policy=\"unknown\"}} 3", peers("b", "d", 9091, "UDP")),
        format!("netpol_observe_flows_total{{{},verdict=\"denied\"}} 1", peers("a", "c", 9090, "UDP")),
        format!("netpol_observe_flows_total{{{},verdict=\"not_isolated\"}} 1", peers("a", "b", 8080, "TCP")),
        format!("netpol_observe_staged_verdicts_total{{{},verdict=\"denied\"}} 1", peers("a", "b", 8080, "TCP")),
        "netpol_observe_policy_verdicts_total{namespace=\"shop\",kind=\"Pod\",workload=\"c\",direction=\"ingress\",verdict=\"denied\"} 1".to_owned(),
        "netpol_observe_policy_verdicts_total{namespace=\"shop\",kind=\"Pod\",workload=\"c\",direction=\"ingress\",verdict=\"allowed\"} 1".to_owned(),
        "netpol_observe_attached_interfaces 4".to_owned(),
        "netpol_observe_unprotected_workloads{namespace=\"shop\",direction=\"ingress\"} 3".to_owned(),
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line} in\n{m}");
    }
    // Nothing listens on c:9090, so c's kernel drops b's datagrams too (NO_SOCKET), which no
    // policy explains. Only the drops of this test's pods (the tracepoint sees the whole host).
    let no_socket = format!(
        "netpol_observe_drops_total{{{},reason=\"NO_SOCKET\",policy=\"unknown\"}} 2",
        peers("b", "c", 9090, "UDP")
    );
    assert!(
        m.lines().any(|l| l == no_socket),
        "missing {no_socket} in\n{m}"
    );
    assert_eq!(m.matches("netpol_observe_drops_total{").count(), 3, "{m}");

    // `netpol-observe flows --agent` reads the same API.
    let out = Command::new(netpol_observe_e2e::bin())
        .args([
            "flows",
            "--agent",
            &format!("http://{listen}"),
            "--verdict",
            "denied",
            "--output",
            "jsonl",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<ObservedFlow> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0], denied[0]);

    // Recommendations from the agent's flows: real NetworkPolicies, every observed flow allowed
    // but those the kernel dropped: a → c (denied by shop/c-from-b) and b → d (dropped by a
    // rule no policy explains) never got through, so they get no allow rule and are listed for
    // review; b → c's NO_SOCKET drops are no filter's (nothing listens), b → c is learned.
    let (code, served) = get(listen, "/api/v1/recommendations").unwrap();
    assert_eq!(code, 200, "{served}");
    let recommended = network_policies(&served);
    let names: Vec<String> = recommended
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "a-np", "b-np", "c-np"], "{served}");
    assert!(
        recommended
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some("shop"))
    );
    let c_np = serde_json::to_value(recommended[3].spec.as_ref().unwrap()).unwrap();
    assert_eq!(
        c_np["ingress"],
        serde_json::json!([{
            "from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
            "ports": [{"port": 9090, "protocol": "UDP"}]
        }]),
        "{served}"
    );
    for want in [
        "# note: denied by the policies in force — review: shop/Pod/a -> shop/Pod/c:9090/UDP (1 flow(s); ingress denied, isolated by shop/c-from-b; 5 packet(s) dropped (NETFILTER_DROP) by shop/c-from-b): not learned",
        "# note: denied by the policies in force — review: shop/Pod/b -> shop/Pod/d:9091/UDP (1 flow(s); 3 packet(s) dropped (NETFILTER_DROP), no policy explains it): not learned",
    ] {
        assert!(served.contains(want), "{want}\n{served}");
    }
    let (code, learned) = get(listen, "/api/v1/recommendations?include_denied=true").unwrap();
    assert_eq!(code, 200, "{learned}");
    assert_eq!(network_policies(&learned).len(), 5, "{learned}");
    let (code, only_d) = get(
        listen,
        "/api/v1/recommendations?namespace=shop&default_deny=false",
    )
    .unwrap();
    assert_eq!(code, 200, "{only_d}");
    assert_eq!(network_policies(&only_d).len(), 3, "{only_d}");
    // `netpol-observe recommend --agent` reads the same flows: the same policies, byte for byte.
    let out = Command::new(netpol_observe_e2e::bin())
        .args([
            "recommend",
            "--agent",
            &format!("http://{listen}"),
            "--inventory",
        ])
        .arg(dir.path().join("inventory.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served_yaml: String = served
        .lines()
        .filter(|l| !l.starts_with("# note: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), served_yaml);

    // SIGTERM: exit 0 with nothing left attached to the pods' interfaces.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(
        status.success(),
        "agent exit: {status}; log: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    for veth in pods.interfaces() {
        let out = Command::new("bpftool")
            .args(["net", "show", "dev", &veth])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("tc_flow"), "{veth} still has: {text}");
    }
}

/// A TCP connection established before the agent starts, client on a LOW port and server on a
/// HIGH one (so guessing "the higher port is the ephemeral client" gets it backwards): once its
/// packets are seen, the agent orients it by the server's listening socket.
#[test]
fn connection_older_than_the_agent_is_oriented_by_the_listening_socket() {
    if !netpol_observe_e2e::require_root(
        "connection_older_than_the_agent_is_oriented_by_the_listening_socket",
    ) {
        return;
    }
    const CLIENT_PORT: u16 = 1011;
    const SERVER_PORT: u16 = 45011;
    let mut pods = Pods::new("ag3", 3);
    let (client, server) = (pods.add("client"), pods.add("server"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        pods.inventory("shop", "node-1", ""),
    )
    .unwrap();

    // The server listens on every address of its namespace (a wildcard listener).
    let listener = pods.run_in(server, move || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], SERVER_PORT))).unwrap()
    });
    let dst = SocketAddr::from((pods.ip(server), SERVER_PORT));
    let src = SocketAddr::from((pods.ip(client), CLIENT_PORT));
    let mut conn: TcpStream = pods.run_in(client, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&src.into()).unwrap();
        s.connect_timeout(&dst.into(), Duration::from_secs(20))
            .unwrap();
        s.into()
    });
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer, src);
    let ping = |conn: &mut TcpStream, accepted: &mut TcpStream| {
        conn.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).unwrap();
        accepted.write_all(b"world").unwrap();
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
    };
    ping(&mut conn, &mut accepted);

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = start_agent(dir.path(), &pods, listen, &[]);
    // The handshake is long gone: the agent sees the flow from its next data packets on.
    for _ in 0..3 {
        ping(&mut conn, &mut accepted);
    }

    let start = Instant::now();
    let flow = loop {
        let got = flows(listen, "");
        let tcp: Vec<&ObservedFlow> = got
            .iter()
            .filter(|f| f.flow.protocol.as_str() == "TCP")
            .collect();
        if let [f] = tcp.as_slice()
            && f.flow
                .packets
                .is_some_and(|p| p.sent >= 3 && p.received >= 3)
        {
            break (*f).clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the one TCP flow; got {got:?}\nagent log:\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let f = &flow.flow;
    assert_eq!(
        (f.src.pod.as_deref(), f.src.ip, f.src.port),
        (Some("client"), src.ip(), Some(CLIENT_PORT)),
        "{f:?}"
    );
    assert_eq!(
        (f.dst.pod.as_deref(), f.dst.ip, f.dst.port),
        (Some("server"), dst.ip(), Some(SERVER_PORT)),
        "{f:?}"
    );
    assert_eq!(
        f.state,
        Some(netpol_observe_core::flow::FlowState::Established)
    );
    // Counted from the client's point of view: 3 requests of 5 bytes sent, 3 answers received.
    let p = f.packets.unwrap();
    assert!(p.sent >= 3 && p.received >= 3, "{p:?}");
    drop(conn);
    drop(accepted);
}

#[test]
fn prometheus_scrapes_the_agent() {
    if !netpol_observe_e2e::require_root("prometheus_scrapes_the_agent") {
        return;
    }
    let prometheus = Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "Debian's prometheus package is needed (cargo xtask setup)"
    );
    let mut pods = Pods::new("ag2", 2);
    let (a, b) = (pods.add("web"), pods.add("api"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        pods.inventory("prom", "node-1", ""),
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = start_agent(dir.path(), &pods, listen, &["--drops", "false"]);
    tcp_exchange(&pods, a, b, 8081);
    wait_for("the flow in the metrics", Duration::from_secs(15), || {
        get(listen, "/metrics").is_some_and(|(_, m)| m.contains("dst_workload=\"api\""))
    });

    // `promtool check metrics` has nothing to say about a real scrape.
    let (_, scrape) = get(listen, "/metrics").unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: netpol-observe\n  static_configs: [{{targets: ['{listen}']}}]\n"
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut result = serde_json::Value::Null;
    wait_for(
        "Prometheus to scrape the agent",
        Duration::from_secs(40),
        || {
            let Some((200, body)) = get(web, "/api/v1/query?query=netpol_observe_flows_total")
            else {
                return false;
            };
            result = serde_json::from_str(&body).unwrap_or_default();
            result["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    );
    let series = result["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{result}");
    let labels = &series[0]["metric"];
    for (k, v) in [
        ("__name__", "netpol_observe_flows_total"),
        ("src_namespace", "prom"),
        ("src_workload", "web"),
        ("dst_namespace", "prom"),
        ("dst_workload", "api"),
        ("dst_port", "8081"),
        ("protocol", "TCP"),
        ("verdict", "not_isolated"),
        ("job", "netpol-observe"),
    ] {
        assert_eq!(labels[k], v, "{k} in {labels}");
    }
    assert_eq!(series[0]["value"][1], "1");
    // The scrape is healthy.
    let (_, up) = get(web, "/api/v1/query?query=up").unwrap();
    assert!(up.contains("\"1\""), "{up}");
}

#[test]
fn bad_configuration_and_missing_interface_are_clear_errors() {
    if !netpol_observe_e2e::require_root("bad_configuration_and_missing_interface_are_clear_errors")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(netpol_observe_e2e::bin())
            .arg("agent")
            // A run that wrongly starts still ends.
            .args([
                "--listen",
                "127.0.0.1:0",
                "--output",
                "none",
                "--duration",
                "10",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, "metrics:\n  seriesBudget: lots\n").unwrap();
    let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("agent.yaml") && err.contains("metrics.seriesBudget"),
        "{err}"
    );

    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n").unwrap();
    let (code, err) = run(&["--inventory", inv.to_str().unwrap(), "--interfaces", "lo"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("inventory.yaml"), "{err}");

    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
    let (code, err) = run(&[
        "--inventory",
        empty.to_str().unwrap(),
        "--interfaces",
        "npo-no-such-if",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("interface npo-no-such-if does not exist"),
        "{err}"
    );

    let (code, err) = run(&[
        "--inventory",
        empty.to_str().unwrap(),
        "--interfaces",
        "lo",
        "--drop-reasons",
        "NO_SUCH_REASON",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("NO_SUCH_REASON") && err.contains("NETFILTER_DROP"),
        "{err}"
    );
}

/// A reload that fails is visible: `/readyz` 503 naming the file, every `inventory_synced`
/// gauge 0, the previous inventory still in use; a good file makes it ready again.
#[test]
fn broken_inventory_reload_makes_the_agent_unready_until_fixed() {
    if !netpol_observe_e2e::require_root(
        "broken_inventory_reload_makes_the_agent_unready_until_fixed",
    ) {
        return;
    }
    let mut pods = Pods::new("ag4", 4);
    pods.add("a");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    let good = pods.inventory("shop", "node-1", "");
    std::fs::write(&inventory, &good).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = start_agent(dir.path(), &pods, listen, &[]);
    let synced = |resource: &str| {
        let (_, body) = get(listen, "/metrics").unwrap();
        let line = format!("netpol_observe_inventory_synced{{resource=\"{resource}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&line).map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(synced("pods"), "1");

    std::fs::write(
        &inventory,
        "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
    )
    .unwrap();
    wait_for(
        "/readyz 503 after the broken reload",
        Duration::from_secs(30),
        || matches!(get(listen, "/readyz"), Some((503, body)) if body.contains("inventory reload failed") && body.contains("inventory.yaml")),
    );
    assert_eq!(synced("pods"), "0");
    assert_eq!(synced("networking.k8s.io/networkpolicies"), "0");

    std::fs::write(&inventory, &good).unwrap();
    wait_for("/readyz 200 after the fix", Duration::from_secs(30), || {
        matches!(get(listen, "/readyz"), Some((200, _)))
    });
    assert_eq!(synced("pods"), "1");
}

/// Loading a large inventory takes seconds (60k pods: ~15 s in a debug build here): the reload
/// runs beside the event loop, so flows are still recorded meanwhile and SIGTERM is answered
/// within seconds, with the final flows written.
#[test]
fn slow_inventory_reload_blocks_neither_flows_nor_sigterm() {
    if !netpol_observe_e2e::require_root("slow_inventory_reload_blocks_neither_flows_nor_sigterm") {
        return;
    }
    let mut pods = Pods::new("ag5", 5);
    let (a, b) = (pods.add("a"), pods.add("b"));
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(&inventory, pods.inventory("shop", "node-1", "")).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = start_agent(dir.path(), &pods, listen, &[]);

    let mut big = pods.inventory("shop", "node-1", "");
    for i in 0..60_000u32 {
        big.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: x}}}}\n\
             spec: {{nodeName: node-2, containers: [{{name: c, image: x}}]}}\n\
             status: {{phase: Running, podIP: 10.{}.{}.{}}}\n",
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let staging = dir.path().join("big.tmp");
    std::fs::write(&staging, big).unwrap();
    std::fs::rename(&staging, &inventory).unwrap();
    // The next poll (1 s) starts the reload.
    std::thread::sleep(Duration::from_secs(2));
    tcp_exchange(&pods, a, b, 8081);
    let seen = Instant::now();
    wait_for(
        "the flow during the reload",
        Duration::from_secs(30),
        || {
            flows(listen, "")
                .iter()
                .any(|f| f.flow.dst.port == Some(8081))
        },
    );
    eprintln!("flow served {:?} after the exchange", seen.elapsed());
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM during a reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("exited {:?} after SIGTERM", t.elapsed());
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        !log.contains("inventory reloaded"),
        "the reload was over before SIGTERM: {log}"
    );
}
