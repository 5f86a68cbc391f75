//! The simulated cluster on the machine (root).
//!
//! Each node is its own network namespace (`npo-lab-<run>-node` for a one-node lab,
//! `npo-lab-<run>-node-<name>` otherwise), so that labs never touch the host's routing or
//! firewall and several labs (parallel tests) can run side by side with the same CIDRs.
//! Inside a node:
//! - the node IP on its loopback (answered to ARP on every veth, so it is its pods' gateway);
//! - one routed veth per pod of the node (host side `veth<8 hex>`, matching the usual CNI
//!   pattern `veth*`) with a `/32` route, the pod's end `eth0` in the pod's namespace with its
//!   `/32` address and a default route via the node IP (the Calico-style routed layout);
//! - IPv4 forwarding on, the Service DNAT table for every Service
//!   ([`services`](super::services)), as kube-proxy has on every node.
//!
//! The first node is also the gateway of the externals: one routed veth per external host
//! (host side `ext<i>h<j>`), hosts in their own namespaces with that node as default gateway.
//! With several nodes, a `npo-lab-<run>-fabric` namespace holds a bridge (the nodes' L2
//! network); every node has an `eth0` on it, a route to every other node's pod CIDR via that
//! node's IP (as a routed CNI installs them), and the other nodes route the externals' subnets
//! via the first node. A cross-node connection thus leaves the client pod's veth on one node and
//! enters the server pod's veth on the other, each node's agent seeing its own side.
//!
//! Servers answer on every declared port of every pod and external host, kube-dns answers
//! on the `coredns` pod. [`Topology::teardown`] (also run on drop) aborts the servers, kills
//! the processes started in the lab's namespaces and deletes every namespace of the run, which
//! removes the veths, routes and nftables tables.

use std::fmt::Write;

use tokio::task::JoinSet;

use super::{
    dns,
    model::{DNS_NAMESPACE, LabModel},
    netns::{self, NetnsError, RunLock},
    servers, services,
};
use crate::flow::Protocol;

/// The lab on the machine: namespaces, links, nftables tables and server tasks of one run.
#[derive(Debug)]
pub struct Topology {
    run: RunLock,
    /// The nodes' namespaces, in [`LabModel::nodes`] order.
    nodes: Vec<String>,
    /// The namespace of the nodes' bridge (several nodes only).
    fabric: Option<String>,
    pods: Vec<String>,
    pod_veths: Vec<String>,
    externals: Vec<Vec<String>>,
    tasks: JoinSet<()>,
    /// The zone kube-dns serves (set by [`Topology::start_servers`]).
    zone: Option<dns::SharedZone>,
    torn_down: bool,
}

/// A long-running process of the lab (the agent, Prometheus): stopped with SIGTERM, then
/// SIGKILL if it does not exit within 5 s ([`LabProcess::stop`]); dropped (error and
/// interruption paths) with SIGTERM and a 3 s grace before SIGKILL.
#[derive(Debug)]
pub(crate) struct LabProcess {
    child: Option<tokio::process::Child>,
    /// What it is, for the log.
    what: &'static str,
}

impl LabProcess {
    /// Wraps a process started with [`Topology::spawn_logged_in`] or [`Topology::spawn_in`].
    pub(crate) fn new(child: tokio::process::Child, what: &'static str) -> LabProcess {
        LabProcess {
            child: Some(child),
            what,
        }
    }

    /// Its exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "{} did not stop within 5s of SIGTERM: killing it",
                    self.what
                );
                let _ = child.kill().await;
            }
        }
    }
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        terminate(&child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.start_kill();
    }
}

/// A process started in the lab gets SIGTERM when the lab dies, even by SIGKILL (the agent
/// then detaches its programs and exits instead of staying attached until the next run).
/// Lab processes are spawned from the runtime's worker threads, which live as long as the lab
/// (the signal is tied to the thread that forks).
fn terminate_with_lab(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn host_veth_name(taken: &[String], pod: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    loop {
        let name = format!("veth{h:08x}");
        if !taken.contains(&name) {
            return name;
        }
        h = h.wrapping_add(1);
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Topology {
    /// Clears the leftovers of killed runs, then creates the node, pods and external hosts of
    /// `model` with their links, routes and Service rules. On failure everything created so far
    /// is removed before returning.
    pub fn create(model: &LabModel) -> Result<Topology, NetnsError> {
        let removed = netns::clear_leftovers()?;
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "removed leftovers of a previous lab run"
            );
        }
        let run = RunLock::acquire()?;
        let prefix = run.prefix();
        let nodes: Vec<String> = match model.nodes.len() {
            1 => vec![format!("{prefix}node")],
            _ => model
                .nodes
                .iter()
                .map(|n| format!("{prefix}node-{}", sanitize(&n.name)))
                .collect(),
        };
        let fabric = (model.nodes.len() > 1).then(|| format!("{prefix}fabric"));
        let pods: Vec<String> = model
            .pods
            .iter()
            .map(|p| format!("{prefix}{}.{}", sanitize(&p.namespace), sanitize(&p.name)))
            .collect();
        let mut pod_veths = Vec::new();
        for p in &model.pods {
            let name = host_veth_name(&pod_veths, &format!("{}/{}", p.namespace, p.name));
            pod_veths.push(name);
        }
        let externals: Vec<Vec<String>> = model
            .externals
            .iter()
            .map(|e| {
                (0..e.hosts.len())
                    .map(|j| format!("{prefix}ext-{}-{j}", sanitize(&e.name)))
                    .collect()
            })
            .collect();
        let mut topo = Topology {
            run,
            nodes,
            fabric,
            pods,
            pod_veths,
            externals,
            tasks: JoinSet::new(),
            zone: None,
            torn_down: false,
        };
        // On error, `topo` is dropped and its Drop removes what was created.
        topo.configure(model)?;
        Ok(topo)
    }

    fn all_namespaces(&self) -> Vec<String> {
        let mut all = self.nodes.clone();
        all.extend(self.fabric.iter().cloned());
        all.extend(self.pods.iter().cloned());
        all.extend(self.externals.iter().flatten().cloned());
        all
    }

    fn configure(&mut self, model: &LabModel) -> Result<(), NetnsError> {
        let mut add = String::new();
        for ns in self.all_namespaces() {
            let _ = writeln!(add, "netns add {ns}");
        }
        netns::ip_batch(None, &add)?;
        if let Some(fabric) = &self.fabric {
            netns::ip_batch(
                Some(fabric),
                "link set lo up\nlink add br0 type bridge\nlink set br0 up\n",
            )?;
        }
        let gateway = &model.nodes[0];
        for (n, node) in model.nodes.iter().enumerate() {
            let mut script = format!("link set lo up\naddr add {}/32 dev lo\n", node.ip);
            for &i in &node.pods {
                let veth = &self.pod_veths[i];
                let _ = writeln!(
                    script,
                    "link add {veth} type veth peer name eth0 netns {}\nlink set {veth} up\nroute add {}/32 dev {veth}",
                    self.pods[i], model.pods[i].ip
                );
            }
            if let Some(fabric) = &self.fabric {
                let _ = writeln!(
                    script,
                    "link add eth0 type veth peer name n{n} netns {fabric}\nlink set eth0 up\nroute add {} dev eth0 src {}",
                    ipnet::Ipv4Net::new(node.ip, 24)
                        .map(|n| n.trunc())
                        .unwrap_or_default(),
                    node.ip
                );
                for other in model.nodes.iter().filter(|o| o.name != node.name) {
                    let _ = writeln!(
                        script,
                        "route add {} via {} dev eth0",
                        other.pod_cidr, other.ip
                    );
                }
                if n > 0 {
                    for ext in &model.externals {
                        let _ =
                            writeln!(script, "route add {} via {} dev eth0", ext.cidr, gateway.ip);
                    }
                }
            }
            if n == 0 {
                for (i, ext) in model.externals.iter().enumerate() {
                    for (j, host) in ext.hosts.iter().enumerate() {
                        let link = format!("ext{i}h{j}");
                        let _ = writeln!(
                            script,
                            "link add {link} type veth peer name eth0 netns {}\nlink set {link} up\nroute add {host}/32 dev {link}",
                            self.externals[i][j]
                        );
                    }
                }
            }
            netns::ip_batch(Some(&self.nodes[n]), &script)?;
            netns::sysctl(
                &self.nodes[n],
                &["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"],
            )?;
            if let Some(fabric) = &self.fabric {
                netns::ip_batch(
                    Some(fabric),
                    &format!("link set n{n} master br0\nlink set n{n} up\n"),
                )?;
            }
        }

        let endpoint = |ip: std::net::Ipv4Addr, gw: std::net::Ipv4Addr| {
            format!(
                "link set lo up\naddr add {ip}/32 dev eth0\nlink set eth0 up\nroute add {gw}/32 dev eth0 scope link\nroute add default via {gw} dev eth0\n"
            )
        };
        for (i, pod) in model.pods.iter().enumerate() {
            let gw = model.nodes[pod.node].ip;
            netns::ip_batch(Some(&self.pods[i]), &endpoint(pod.ip, gw))?;
        }
        for (i, ext) in model.externals.iter().enumerate() {
            for (j, host) in ext.hosts.iter().enumerate() {
                netns::ip_batch(Some(&self.externals[i][j]), &endpoint(*host, gateway.ip))?;
            }
        }
        let services = services::compile(model);
        for node in &self.nodes {
            netns::nft(node, &services)?;
        }
        // Traffic may start at once (no agent in some tests): wait for every veth's carrier.
        for ns in self.nodes.iter().chain(&self.fabric) {
            netns::wait_links_up(ns, std::time::Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Starts the servers: echo on every declared port of every pod and external host, DNS on
    /// the kube-dns pod. Needs a tokio runtime.
    pub fn start_servers(&mut self, model: &LabModel) -> Result<(), NetnsError> {
        for (i, pod) in model.pods.iter().enumerate() {
            let is_dns = pod.namespace == DNS_NAMESPACE && model.workload_of(pod).name == "coredns";
            if is_dns {
                let udp = servers::bind_udp(&self.pods[i], 53)?;
                let tcp = servers::bind_tcp(&self.pods[i], 53)?;
                let zone = self
                    .zone
                    .get_or_insert_with(|| std::sync::Arc::new(dns::zone(model).into()));
                dns::spawn(&mut self.tasks, udp, tcp, std::sync::Arc::clone(zone));
                continue;
            }
            for port in &pod.ports {
                self.serve(&self.pods[i].clone(), port.port, port.protocol)?;
            }
        }
        for (i, ext) in model.externals.iter().enumerate() {
            for j in 0..ext.hosts.len() {
                for port in &ext.ports {
                    self.serve(&self.externals[i][j].clone(), port.port, port.protocol)?;
                }
            }
        }
        Ok(())
    }

    /// The zone kube-dns serves, once the servers run (the rotation step changes it).
    pub(crate) fn dns_zone(&self) -> Option<&dns::SharedZone> {
        self.zone.as_ref()
    }

    fn serve(&mut self, ns: &str, port: u16, protocol: Protocol) -> Result<(), NetnsError> {
        match protocol {
            Protocol::Udp => {
                let s = servers::bind_udp(ns, port)?;
                servers::spawn_udp_echo(&mut self.tasks, s);
            }
            _ => {
                let l = servers::bind_tcp(ns, port)?;
                servers::spawn_tcp_echo(&mut self.tasks, l);
            }
        }
        Ok(())
    }

    /// Starts `program args` inside network namespace `netns` (e.g. the agent in
    /// [`node_netns`](Self::node_netns)). The process is killed when the lab is torn down (and
    /// by the next run's leftover cleanup if this one is killed), and when the handle is dropped.
    pub fn spawn_in(
        &self,
        netns: &str,
        program: &std::path::Path,
        args: &[&std::ffi::OsStr],
    ) -> Result<tokio::process::Child, NetnsError> {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        terminate_with_lab(&mut cmd);
        cmd.spawn().map_err(|e| NetnsError::Command {
            command: format!("ip netns exec {netns} {}", program.display()),
            stderr: e.to_string(),
        })
    }

    /// Like [`spawn_in`](Self::spawn_in), with the process's standard output and error sent
    /// to `stdout`/`stderr` (e.g. a log file).
    pub(crate) fn spawn_logged_in(
        &self,
        netns: &str,
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<tokio::process::Child, NetnsError> {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        terminate_with_lab(&mut cmd);
        cmd.spawn().map_err(|e| NetnsError::Command {
            command: format!("ip netns exec {netns} {}", program.display()),
            stderr: e.to_string(),
        })
    }

    /// The run id (`<pid>n<k>`).
    pub fn run_id(&self) -> &str {
        self.run.id()
    }

    /// The first node's network namespace (where kube-dns, the externals' links, the control
    /// plane and Prometheus are).
    pub fn node_netns(&self) -> &str {
        &self.nodes[0]
    }

    /// The nodes' network namespaces, in [`LabModel::nodes`] order.
    pub(crate) fn node_namespaces(&self) -> &[String] {
        &self.nodes
    }

    /// The network namespace of node `node` (index in [`LabModel::nodes`]), where its agent
    /// runs and its nftables tables live.
    pub(crate) fn node_netns_of(&self, node: usize) -> &str {
        &self.nodes[node]
    }

    /// The network namespace of pod `pod` (index in [`LabModel::pods`]).
    pub fn pod_netns(&self, pod: usize) -> &str {
        &self.pods[pod]
    }

    /// The node-side veth of pod `pod`.
    pub fn pod_veth(&self, pod: usize) -> &str {
        &self.pod_veths[pod]
    }

    /// The network namespace of host `host` of external `external`.
    pub(crate) fn external_netns(&self, external: usize, host: usize) -> &str {
        &self.externals[external][host]
    }

    /// Every namespace of this run.
    pub fn namespaces(&self) -> Vec<String> {
        self.all_namespaces()
    }

    /// Stops the servers and removes every namespace of the run (with their links, routes and
    /// nftables tables). Idempotent.
    pub fn teardown(&mut self) -> Result<(), NetnsError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        // Sockets keep a namespace alive: close them before deleting the namespaces.
        self.tasks.abort_all();
        let result = netns::delete(&netns::list(&self.run.prefix()));
        tracing::debug!(run = self.run.id(), "lab topology removed");
        result
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::warn!(%err, "lab cleanup incomplete");
        }
    }
}
