//! The rotation step (scenario `externals[].rotateTo`): after the enforcement probes, an
//! external's DNS names move to another of its hosts, as a cloud endpoint's addresses rotate,
//! and every traffic entry to one of the names runs again. The policies in force were written
//! for the old address: the connection must be dropped, and the agents must have counted the
//! rotation (`netpol_observe_dns_rotations_total`: a name a policy allows resolved to an
//! address outside its ipBlocks) when the answer arrived — before the connection was tried.
//!
//! Per traffic entry: the client pod resolves the name once (the lab checks the answer is the
//! new address), the lab waits until the agents' counter moved (or the agent timeout passed),
//! then runs the entry's connections (each resolving again) and waits until the agents
//! reported the drop and the counter is final. Written to `rotation.json`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use serde::Serialize;

use super::{
    agent::{AGENT_INTERVAL, AgentError, Agents},
    dns,
    expect::{Seen, drop_of},
    model::{LabModel, PeerRef, ProbeKind, ProbeModel, protocol_name},
    servers,
    topology::Topology,
    traffic::{self, Timeouts},
};

/// The agents' rotation counter (one series per workload and policy).
pub(crate) const ROTATION_METRIC: &str = "netpol_observe_dns_rotations_total";

/// One traffic entry run again after its name moved (a line of `rotation.json`'s `probes`).
#[derive(Debug, Clone, Serialize)]
pub struct RotationProbe {
    /// `from` as written.
    pub from: String,
    /// The DNS name, as written in `to`.
    pub to: String,
    /// Port.
    pub port: u16,
    /// `TCP`/`UDP`.
    pub protocol: String,
    /// What the client's lookup answered after the move (null when it failed).
    pub answered: Option<Ipv4Addr>,
    /// Always `denied`: the policies allow the old address.
    pub expected: Seen,
    /// What happened.
    pub observed: Seen,
    /// The kernel drop reason the agents reported for the connection.
    pub drop_reason: Option<String>,
    /// The policy (`ns/name`, comma-separated) the agents named for the drop.
    pub policy: Option<String>,
    /// Rotations the agents counted between the lookup and the first connection.
    pub alerts_before_connect: u64,
    /// Rotations the agents counted for this entry in all (its lookups, every node).
    pub alerts: u64,
    /// Rotations expected: one per node running a client pod of the entry (an agent counts a
    /// workload, policy, name and new address once).
    pub expected_alerts: u64,
    /// The series that counted, `node: labels +n`.
    pub alert_series: Vec<String>,
    /// Connections attempted.
    pub connections: u32,
    /// Connections that went through.
    pub succeeded: u32,
    /// The first failure (lookup or connection), if any.
    pub error: Option<String>,
}

impl RotationProbe {
    /// Whether the entry did what a rotation should: the lookup answered the new address, the
    /// agents counted the rotation exactly as expected, already before the connection, and the
    /// connection was dropped and reported with its reason.
    pub fn ok(&self, to_address: Ipv4Addr) -> bool {
        self.answered == Some(to_address)
            && self.alerts_before_connect >= 1
            && self.alerts == self.expected_alerts
            && self.observed == Seen::Denied
            && self.drop_reason.is_some()
    }
}

/// One rotation: an external's names moved from one host to another, and what its traffic
/// entries did then.
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    /// The external.
    pub external: String,
    /// Its DNS names (all moved).
    pub names: Vec<String>,
    /// Their TTL, seconds.
    pub ttl: u32,
    /// The address the names had.
    pub from_address: Ipv4Addr,
    /// The address they have now.
    pub to_address: Ipv4Addr,
    /// The external it belongs to (the same, or another range of the provider).
    pub to_external: String,
    /// The traffic entries to the names, run again.
    pub probes: Vec<RotationProbe>,
}

impl RotationReport {
    /// Whether every entry did what a rotation should (see [`RotationProbe::ok`]) and there
    /// was at least one.
    pub fn ok(&self) -> bool {
        !self.probes.is_empty() && self.probes.iter().all(|p| p.ok(self.to_address))
    }
}

/// Every `netpol_observe_dns_rotations_total` series of one scrape: labels → value.
pub(crate) fn rotation_series(scrape: &str) -> BTreeMap<String, u64> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(ROTATION_METRIC))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            // Counters are whole numbers; a bad value counts as none.
            Some((labels.trim().to_owned(), value.max(0.0) as u64))
        })
        .collect()
}

/// Every agent's rotation series: (node, labels) → value.
async fn counters(agents: &Agents) -> Result<BTreeMap<(String, String), u64>, AgentError> {
    let mut all = BTreeMap::new();
    for agent in agents.each() {
        let scrape = agent.metrics().await?;
        for (labels, v) in rotation_series(&scrape) {
            all.insert((agent.node().to_owned(), labels), v);
        }
    }
    Ok(all)
}

/// What grew from `before` to `after`: total and the series, `node: labels +n`.
fn growth(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut series = Vec::new();
    for ((node, labels), v) in after {
        let d = v.saturating_sub(
            before
                .get(&(node.clone(), labels.clone()))
                .copied()
                .unwrap_or(0),
        );
        if d > 0 {
            total += d;
            series.push(format!("{node}: {labels} +{d}"));
        }
    }
    (total, series)
}

/// The nodes running the client pods `probe`'s connections use (round robin from the first).
fn client_nodes(model: &LabModel, probe: &ProbeModel) -> u64 {
    let PeerRef::Workload(w) = probe.source else {
        return 0;
    };
    let pods = &model.workloads[w].pods;
    let used = pods.len().min(probe.connections as usize).max(1);
    let nodes: std::collections::BTreeSet<usize> =
        pods[..used].iter().map(|&p| model.pods[p].node).collect();
    nodes.len() as u64
}

/// Runs the rotation step of every external with `rotateTo` (see the module docs); `timeout`
/// bounds each wait for the agents.
pub async fn run(
    model: &LabModel,
    topo: &Topology,
    agents: &Agents,
    timeouts: Timeouts,
    timeout: Duration,
) -> Result<Vec<RotationReport>, AgentError> {
    let mut reports = Vec::new();
    for e in model.rotations() {
        let ext = &model.externals[e];
        let Some((to, to_external)) = ext.rotate_to else {
            continue;
        };
        let Some(zone) = topo.dns_zone() else {
            tracing::warn!(external = %ext.name, "kube-dns does not run: no rotation");
            continue;
        };
        let from = dns::move_names(zone, &ext.dns, to).unwrap_or(ext.hosts[0]);
        tracing::info!(external = %ext.name, names = ?ext.dns, %from, %to, "rotation: the names moved");
        let mut probes = Vec::new();
        for probe in model.probes.iter().filter(|p| {
            p.kind == ProbeKind::Traffic
                && p.target == PeerRef::External(e)
                && p.dns_name(model).is_some()
        }) {
            let PeerRef::Workload(w) = probe.source else {
                continue; // an external client reaches the hosts by address
            };
            let client = topo.pod_netns(model.workloads[w].pods[0]).to_string();
            let moved = ProbeModel {
                target: PeerRef::External(to_external),
                ..probe.clone()
            };
            probes.push(
                rotate_probe(
                    model,
                    topo,
                    agents,
                    (probe, &moved),
                    &client,
                    timeouts,
                    timeout,
                )
                .await?,
            );
        }
        reports.push(RotationReport {
            external: ext.name.clone(),
            to_external: model.externals[to_external].name.clone(),
            names: ext.dns.clone(),
            ttl: ext.ttl,
            from_address: from,
            to_address: to,
            probes,
        });
    }
    Ok(reports)
}

async fn rotate_probe(
    model: &LabModel,
    topo: &Topology,
    agents: &Agents,
    (probe, moved): (&ProbeModel, &ProbeModel),
    client: &str,
    timeouts: Timeouts,
    timeout: Duration,
) -> Result<RotationProbe, AgentError> {
    let name = probe.dns_name(model).unwrap_or_default();
    let since = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_millis(500))
        .unwrap_or_else(|_| Timestamp::now());
    let before = counters(agents).await?;
    // The client resolves the name again (its first pod, as the first connection does).
    let server = SocketAddr::from((model.dns_service().cluster_ip, 53));
    let answered = match servers::udp_client_socket(client) {
        Ok(socket) => dns::resolve(&socket, server, name, timeouts.dns)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // The agents count the rotation when the answer arrives: wait for it before connecting.
    let deadline = Instant::now() + timeout;
    let mut before_connect = 0;
    while answered.is_ok() {
        before_connect = growth(&before, &counters(agents).await?).0;
        if before_connect > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = traffic::run_probe(model, topo, probe, timeouts).await;
    let observed = match result.succeeded {
        0 => Seen::Denied,
        _ => Seen::Allowed,
    };
    // Wait until the agents reported the drop and the counter settled at what is expected.
    let expected_alerts = client_nodes(model, probe);
    let deadline = Instant::now() + AGENT_INTERVAL * 5;
    let (drop, alerts, series) = loop {
        let flows = agents.flows().await?;
        // The agents report the connection to where the name moved.
        let drop = drop_of(model, moved, &flows, since);
        let (alerts, series) = growth(&before, &counters(agents).await?);
        let reported = observed == Seen::Allowed || drop.is_some();
        if (reported && alerts >= expected_alerts) || Instant::now() > deadline {
            break (drop, alerts, series);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (drop_reason, policy) = match drop {
        Some((reason, policy)) => (Some(reason), policy),
        None => (None, None),
    };
    Ok(RotationProbe {
        from: probe.from.clone(),
        to: probe.to.clone(),
        port: probe.port,
        protocol: protocol_name(probe.protocol),
        answered: answered.as_ref().ok().copied(),
        expected: Seen::Denied,
        observed,
        drop_reason,
        policy,
        alerts_before_connect: before_connect,
        alerts,
        expected_alerts,
        alert_series: series,
        connections: result.connections,
        succeeded: result.succeeded,
        error: answered.err().or(result.error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_series_reads_the_counter_only() {
        let scrape = "# HELP netpol_observe_dns_rotations_total x\n\
            # TYPE netpol_observe_dns_rotations_total counter\n\
            netpol_observe_dns_rotations_total{namespace=\"shop\",workload=\"checkout\",policy=\"shop/checkout-np\"} 1\n\
            netpol_observe_dns_rotations_totalx{a=\"b\"} 5\n\
            netpol_observe_flows_total{a=\"b\"} 7\n";
        let s = rotation_series(scrape);
        assert_eq!(
            s,
            BTreeMap::from([(
                "{namespace=\"shop\",workload=\"checkout\",policy=\"shop/checkout-np\"}".to_owned(),
                1
            )])
        );
        let before = BTreeMap::from([(("node-1".to_owned(), "{a}".to_owned()), 1)]);
        let after = BTreeMap::from([
            (("node-1".to_owned(), "{a}".to_owned()), 1),
            (("node-2".to_owned(), "{b}".to_owned()), 2),
        ]);
        assert_eq!(
            growth(&before, &after),
            (2, vec!["node-2: {b} +2".to_owned()])
        );
    }

    #[test]
    fn a_rotation_is_ok_only_when_counted_before_and_dropped() {
        let to = Ipv4Addr::new(198, 51, 100, 2);
        let p = RotationProbe {
            from: "shop/checkout".into(),
            to: "api.payments.example".into(),
            port: 443,
            protocol: "TCP".into(),
            answered: Some(to),
            expected: Seen::Denied,
            observed: Seen::Denied,
            drop_reason: Some("NETFILTER_DROP".into()),
            policy: Some("shop/checkout-np".into()),
            alerts_before_connect: 1,
            alerts: 1,
            expected_alerts: 1,
            alert_series: vec![],
            connections: 1,
            succeeded: 0,
            error: None,
        };
        assert!(p.ok(to));
        assert!(!p.ok(Ipv4Addr::new(198, 51, 100, 1)));
        assert!(
            !RotationProbe {
                alerts: 2,
                ..p.clone()
            }
            .ok(to)
        );
        assert!(
            !RotationProbe {
                alerts_before_connect: 0,
                ..p.clone()
            }
            .ok(to)
        );
        assert!(
            !RotationProbe {
                observed: Seen::Allowed,
                ..p.clone()
            }
            .ok(to)
        );
        assert!(
            !RotationProbe {
                drop_reason: None,
                ..p
            }
            .ok(to)
        );
    }
}
