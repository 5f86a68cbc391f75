//! A fully populated [`Metrics`]: every family has at least one series. Tests use its
//! encoding as a stand-in scrape (`promtool check metrics`, the Grafana dashboard's metric
//! names) until they can scrape a running agent.

use std::collections::BTreeMap;

use super::{Direction, Metrics, MetricsConfig, MetricsError, Verdict};
use crate::flow::{Directional, Endpoint, FlowRecord, Protocol, ServiceRef, WorkloadRef};

fn pod_endpoint(ip: [u8; 4], port: Option<u16>, ns: &str, workload: &str, pod: &str) -> Endpoint {
    let mut ep = Endpoint::bare(ip.into(), port);
    ep.namespace = Some(ns.to_owned());
    ep.pod = Some(pod.to_owned());
    ep.workload = Some(WorkloadRef {
        kind: "Deployment".to_owned(),
        name: workload.to_owned(),
    });
    ep.labels = Some(BTreeMap::from([("app".to_owned(), workload.to_owned())]));
    ep
}

/// The flows of the sample: web → api (through a Service), api → db-subnet, world → web,
/// and an ICMP ping from web to a node.
pub(crate) fn sample_flows() -> Vec<FlowRecord> {
    let mut web_api = FlowRecord::new(
        Protocol::Tcp,
        [10, 244, 0, 5].into(),
        [10, 96, 0, 20].into(),
        Some(80),
    );
    web_api.src = pod_endpoint([10, 244, 0, 5], Some(51234), "shop", "web", "web-7d9c-x2");
    web_api.dst = pod_endpoint([10, 244, 0, 9], Some(9000), "shop", "api", "api-5f-k1");
    web_api.dst.service = Some(ServiceRef {
        namespace: "shop".to_owned(),
        name: "api".to_owned(),
    });
    web_api.packets = Some(Directional {
        sent: 12,
        received: 10,
    });
    web_api.bytes = Some(Directional {
        sent: 1840,
        received: 5120,
    });

    let mut api_db = FlowRecord::new(
        Protocol::Tcp,
        [10, 244, 0, 9].into(),
        [10, 0, 2, 4].into(),
        Some(5432),
    );
    api_db.src = pod_endpoint([10, 244, 0, 9], Some(40000), "shop", "api", "api-5f-k1");
    api_db.dst.subnet = Some("db-subnet".to_owned());

    let mut world_web = FlowRecord::new(
        Protocol::Tcp,
        [203, 0, 113, 7].into(),
        [10, 244, 0, 5].into(),
        Some(8080),
    );
    world_web.src.subnet = Some("world".to_owned());
    world_web.dst = pod_endpoint([10, 244, 0, 5], Some(8080), "shop", "web", "web-7d9c-x2");

    let mut ping = FlowRecord::new(
        Protocol::Icmp,
        [10, 244, 0, 5].into(),
        [192, 168, 1, 4].into(),
        None,
    );
    ping.src = pod_endpoint([10, 244, 0, 5], None, "shop", "web", "web-7d9c-x2");
    ping.dst.node = Some("node-1".to_owned());

    vec![web_api, api_db, world_web, ping]
}

/// A [`Metrics`] in which every family has been touched (flows, bytes, packets, drops,
/// unenforced flows and the enforcement state, verdicts both ways, staged verdicts,
/// unprotected workloads and every health family), with a series budget small enough that the
/// `other` bucket and `series_dropped_total` appear too.
pub fn populated() -> Metrics {
    let metrics = Metrics::new(MetricsConfig {
        series_budget: 3,
        pod_level: false,
    });
    let flows = sample_flows();
    for (i, flow) in flows.iter().enumerate() {
        let verdict = if i == 1 {
            Verdict::Denied
        } else {
            Verdict::Allowed
        };
        metrics.record_flow(flow, true, 22, 6960, verdict);
        metrics.record_verdict(flow, Direction::Egress, Verdict::NotIsolated);
        metrics.record_verdict(flow, Direction::Ingress, verdict);
        metrics.record_staged(
            flow,
            if i == 0 {
                Verdict::Allowed
            } else {
                Verdict::Denied
            },
        );
    }
    metrics.record_drop(&flows[1], "NETFILTER_DROP", Some("shop/default-deny"), 3);
    metrics.record_drop(&flows[2], "NO_SOCKET", None, 1);
    metrics.record_unenforced(
        super::FlowLabels::from_record(&flows[1], false),
        Some("shop/default-deny"),
    );
    metrics.set_enforcement(super::Enforcement::NotEnforced);
    metrics.record_drift(
        super::FlowLabels::from_record(&flows[2], false),
        super::labels::DriftKind::NewPort,
    );
    metrics.set_unprotected([
        ("shop", Direction::Egress, 2),
        ("shop", Direction::Ingress, 0),
        ("kube-system", Direction::Ingress, 3),
    ]);
    metrics.set_flow_table(4, 65536);
    metrics.set_ringbuf_lost_total(2);
    metrics.set_kernel_error_total("flow_map_full", 1);
    metrics.set_kernel_error_total("parse_error", 5);
    metrics.set_attached_interfaces(3);
    for (_, resource) in crate::inventory::WATCHED_RESOURCES {
        metrics.set_inventory_synced(resource, true);
    }
    metrics.set_inventory_objects(&crate::inventory::Inventory::default());
    // The one reason the agent records: the kernel table's LRU evictions.
    metrics.record_evictions("lru", 7);
    let dns = metrics.dns();
    dns.answer();
    dns.parse_error();
    dns.set_kernel_lost_total(1);
    dns.set_cache(3, 1);
    dns.rotation(super::dns::RotationLabels {
        namespace: "shop".into(),
        kind: "Deployment".into(),
        workload: "web".into(),
        policy: "shop/web-egress".to_owned(),
    });
    metrics
}

/// The OpenMetrics text of [`populated`]: a scrape with every family present.
pub fn populated_scrape() -> Result<String, MetricsError> {
    populated().encode()
}
