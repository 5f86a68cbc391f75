//! Drives the scenario's `traffic` entries and `forbidden` probes from inside the client pods'
//! (or external hosts') namespaces, and reports per probe whether it got through.
//!
//! A TCP connection counts as allowed when it connects and its payload comes back from the
//! echo server; UDP when the datagram comes back. Sources and targets with several pods or
//! hosts are used round robin, connection by connection. `svc/ns/name` targets and externals'
//! DNS names are resolved through kube-dns (a real UDP query from the client pod) before each
//! connection, which goes to the answered address.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    dns,
    model::{LabModel, PeerRef, ProbeKind, ProbeModel, protocol_name},
    servers,
    topology::Topology,
};
use crate::{flow::Protocol, report::Chain};

/// What a probe was expected to do or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every connection went through.
    Allowed,
    /// No connection went through.
    Denied,
    /// Some connections went through, others not.
    Partial,
}

/// The result of one probe (a traffic entry or forbidden probe, all its connections).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Traffic or forbidden.
    pub kind: ProbeKind,
    /// `from` as written in the scenario.
    pub from: String,
    /// `to` as written in the scenario.
    pub to: String,
    /// Port as addressed.
    pub port: u16,
    /// `TCP`/`UDP`.
    pub protocol: String,
    /// Allowed for traffic, denied for forbidden probes.
    pub expected: Outcome,
    /// What happened.
    pub observed: Outcome,
    /// Connections attempted.
    pub connections: u32,
    /// Connections that went through.
    pub succeeded: u32,
    /// Scenario line of the entry.
    pub line: usize,
    /// The first failure, if any.
    pub error: Option<String>,
}

impl ProbeResult {
    /// Whether what happened is what was expected.
    pub(crate) fn as_expected(&self) -> bool {
        self.expected == self.observed
    }
}

/// Probe timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect, echo, UDP reply.
    pub connect: Duration,
    /// Per DNS attempt (two attempts).
    pub dns: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(1000),
            dns: Duration::from_millis(700),
        }
    }
}

/// Where one connection goes from and to.
#[derive(Debug, Clone)]
struct Leg {
    netns: String,
    from_pod: bool,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Addr(SocketAddrV4),
    /// A name resolved through kube-dns first (a Service's, or an external's DNS name).
    Service {
        fqdn: String,
        port: u16,
    },
}

fn leg(model: &LabModel, topo: &Topology, probe: &ProbeModel, n: usize) -> Leg {
    let (netns, from_pod) = match probe.source {
        PeerRef::Workload(w) => {
            let pods = &model.workloads[w].pods;
            (topo.pod_netns(pods[n % pods.len()]).to_string(), true)
        }
        PeerRef::External(e) => {
            let hosts = model.externals[e].hosts.len();
            (topo.external_netns(e, n % hosts).to_string(), false)
        }
        PeerRef::Service(_) => (topo.node_netns().to_string(), false),
    };
    let target = match probe.target {
        PeerRef::Workload(w) => {
            let pods = &model.workloads[w].pods;
            Target::Addr(SocketAddrV4::new(
                model.pods[pods[n % pods.len()]].ip,
                probe.port,
            ))
        }
        PeerRef::External(e) => match probe.dns_name(model) {
            Some(name) if from_pod => Target::Service {
                fqdn: name.to_owned(),
                port: probe.port,
            },
            _ => {
                let hosts = &model.externals[e].hosts;
                Target::Addr(SocketAddrV4::new(hosts[n % hosts.len()], probe.port))
            }
        },
        PeerRef::Service(s) => {
            let svc = &model.services[s];
            if from_pod {
                Target::Service {
                    fqdn: svc.fqdn(),
                    port: probe.port,
                }
            } else {
                // External clients reach a Service through its address (a load balancer).
                Target::Addr(SocketAddrV4::new(svc.cluster_ip, probe.port))
            }
        }
    };
    Leg {
        netns,
        from_pod,
        target,
    }
}

/// Runs `probe` (all its connections, one after the other).
pub(crate) async fn run_probe(
    model: &LabModel,
    topo: &Topology,
    probe: &ProbeModel,
    timeouts: Timeouts,
) -> ProbeResult {
    let mut succeeded = 0;
    let mut error = None;
    for n in 0..probe.connections as usize {
        let leg = leg(model, topo, probe, n);
        match connect(model, &leg, probe.protocol, timeouts).await {
            Ok(()) => succeeded += 1,
            Err(e) => {
                tracing::debug!(from = %probe.from, to = %probe.to, error = %e, "probe connection failed");
                error.get_or_insert(e);
            }
        }
    }
    let observed = if succeeded == probe.connections {
        Outcome::Allowed
    } else if succeeded == 0 {
        Outcome::Denied
    } else {
        Outcome::Partial
    };
    ProbeResult {
        kind: probe.kind,
        from: probe.from.clone(),
        to: probe.to.clone(),
        port: probe.port,
        protocol: protocol_name(probe.protocol),
        expected: match probe.kind {
            ProbeKind::Traffic => Outcome::Allowed,
            ProbeKind::Forbidden => Outcome::Denied,
        },
        observed,
        connections: probe.connections,
        succeeded,
        line: probe.line,
        error,
    }
}

/// Runs every probe of `kinds` concurrently; results in scenario order.
pub async fn run_all(
    model: &LabModel,
    topo: &Topology,
    kinds: &[ProbeKind],
    timeouts: Timeouts,
) -> Vec<ProbeResult> {
    let runs = model
        .probes
        .iter()
        .filter(|p| kinds.contains(&p.kind))
        .map(|p| run_probe(model, topo, p, timeouts));
    futures::future::join_all(runs).await
}

async fn connect(
    model: &LabModel,
    leg: &Leg,
    protocol: Protocol,
    timeouts: Timeouts,
) -> Result<(), String> {
    let addr = match &leg.target {
        Target::Addr(a) => *a,
        Target::Service { fqdn, port } => {
            debug_assert!(leg.from_pod);
            let socket =
                servers::udp_client_socket(&leg.netns).map_err(|e| Chain(&e).to_string())?;
            let server = SocketAddr::from((model.dns_service().cluster_ip, 53));
            let ip = dns::resolve(&socket, server, fqdn, timeouts.dns)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            SocketAddrV4::new(ip, *port)
        }
    };
    let payload = format!("netpol-observe lab {}\n", leg.netns);
    match protocol {
        Protocol::Udp => {
            let socket =
                servers::udp_client_socket(&leg.netns).map_err(|e| Chain(&e).to_string())?;
            socket
                .send_to(payload.as_bytes(), addr)
                .await
                .map_err(|e| format!("send to {addr}: {e}"))?;
            let mut buf = [0u8; 2048];
            let (n, _) = tokio::time::timeout(timeouts.connect, socket.recv_from(&mut buf))
                .await
                .map_err(|_| format!("no UDP reply from {addr} within {:?}", timeouts.connect))?
                .map_err(|e| format!("receive from {addr}: {e}"))?;
            if &buf[..n] != payload.as_bytes() {
                return Err(format!("unexpected UDP reply from {addr}"));
            }
            Ok(())
        }
        _ => {
            let socket =
                servers::tcp_client_socket(&leg.netns).map_err(|e| Chain(&e).to_string())?;
            let exchange = async {
                let mut stream = socket
                    .connect(SocketAddr::V4(addr))
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))?;
                stream
                    .write_all(payload.as_bytes())
                    .await
                    .map_err(|e| format!("write to {addr}: {e}"))?;
                let mut buf = vec![0u8; payload.len()];
                stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| format!("read from {addr}: {e}"))?;
                let _ = stream.shutdown().await;
                if buf != payload.as_bytes() {
                    return Err(format!("unexpected reply from {addr}"));
                }
                Ok(())
            };
            tokio::time::timeout(timeouts.connect, exchange)
                .await
                .map_err(|_| format!("no TCP answer from {addr} within {:?}", timeouts.connect))?
        }
    }
}
