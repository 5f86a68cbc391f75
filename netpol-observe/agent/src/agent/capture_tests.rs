//! The agent's loop without root: [`Agent::run`] driven by a fake [`Capture`] over inventory
//! files. What a kernel would report is sent on the fake's channels; the flows come back
//! attributed, with their verdicts, from the store while running and at the end.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    datapath::{DatapathStats, DnsAnswer, KernelCounters},
    flow::Directional,
};
use crate::{
    datapath::{DropSample, DropsError, FlowUpdate},
    flow::{Endpoint, FlowRecord, FlowState, Protocol},
};

/// A capture whose updates come from the test.
struct FakeCapture {
    updates: broadcast::Sender<FlowUpdate>,
    dns: broadcast::Sender<DnsAnswer>,
    /// The final records the fake hands over at shutdown.
    records: Arc<Mutex<Vec<FlowRecord>>>,
    /// The endpoints the agent said are this node's.
    local: Arc<Mutex<Vec<IpAddr>>>,
}

impl Capture for FakeCapture {
    fn subscribe(&self) -> broadcast::Receiver<FlowUpdate> {
        self.updates.subscribe()
    }

    fn subscribe_dns(&self) -> broadcast::Receiver<DnsAnswer> {
        self.dns.subscribe()
    }

    fn interfaces(&self) -> Vec<String> {
        vec!["veth-fake".to_owned()]
    }

    fn set_local_endpoints(&self, ips: &[IpAddr]) -> Result<(), DatapathError> {
        *lock(&self.local) = ips.to_vec();
        Ok(())
    }

    fn stats(&self) -> DatapathStats {
        DatapathStats::default()
    }

    fn kernel_counters(&self) -> Result<KernelCounters, DatapathError> {
        Ok(KernelCounters::default())
    }

    fn read_drops(&mut self) -> Result<Vec<DropSample>, DropsError> {
        Ok(Vec::new())
    }

    async fn shutdown(self) -> Result<CaptureEnd, DatapathError> {
        Ok(CaptureEnd {
            records: lock(&self.records).clone(),
            drops: Vec::new(),
        })
    }
}

const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, labels: {app: web}}
  spec: {nodeName: node-1, containers: [{name: c, image: x}]}
  status: {podIP: 10.244.0.2, podIPs: [{ip: 10.244.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: db-1, namespace: shop, labels: {app: db}}
  spec: {nodeName: node-1, containers: [{name: c, image: x}]}
  status: {podIP: 10.244.0.3, podIPs: [{ip: 10.244.0.3}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: batch-1, namespace: shop, labels: {app: batch}}
  spec: {nodeName: node-2, containers: [{name: c, image: x}]}
  status: {podIP: 10.244.1.4, podIPs: [{ip: 10.244.1.4}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db-from-web, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: db}}
    policyTypes: [Ingress]
    ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 5432}]
"#;

/// A TCP flow's update from `src` to `dst:port`: new and opened, or its end.
fn update(src: (&str, u16), dst: (&str, u16), ended: bool) -> FlowUpdate {
    let (s, d): (IpAddr, IpAddr) = (src.0.parse().unwrap(), dst.0.parse().unwrap());
    let mut record = FlowRecord::new(Protocol::Tcp, s, d, Some(dst.1));
    record.src = Endpoint::bare(s, Some(src.1));
    record.state = Some(if ended {
        FlowState::Closed
    } else {
        FlowState::Established
    });
    let counts = Directional {
        sent: 3,
        received: 2,
    };
    record.packets = Some(counts);
    record.bytes = Some(counts);
    FlowUpdate {
        record,
        new: !ended,
        delta_packets: counts,
        delta_bytes: counts,
        ended,
        opened: true,
    }
}

/// Waits (up to a minute, however busy the machine) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The loop attributes and judges what the capture reports, tells the capture this node's
/// pods, serves the flows while running, and returns them, with the capture's final records,
/// when the token is cancelled.
#[tokio::test]
async fn the_loop_runs_on_a_fake_capture_until_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("cluster.yaml");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let config = AgentConfig {
        inventory: Some(inventory),
        node_name: Some("node-1".to_owned()),
        ..AgentConfig::default()
    };
    let state = Arc::new(AgentState::new(config));
    let (updates, _) = broadcast::channel(64);
    let (dns, _) = broadcast::channel(64);
    let records = Arc::new(Mutex::new(Vec::new()));
    let local = Arc::new(Mutex::new(Vec::new()));
    let capture = FakeCapture {
        updates: updates.clone(),
        dns,
        records: Arc::clone(&records),
        local: Arc::clone(&local),
    };
    let stop = CancellationToken::new();
    let run = Agent::run(
        Arc::clone(&state),
        async |_: &AgentConfig| Ok(capture),
        stop.clone(),
    );
    let drive = async {
        until("ready", || state.ready().is_ok()).await;
        let allowed = (("10.244.0.2", 40000), ("10.244.0.3", 5432));
        let denied = (("10.244.1.4", 40001), ("10.244.0.3", 5432));
        for (src, dst) in [allowed, denied] {
            updates.send(update(src, dst, false)).unwrap();
        }
        until("two flows in the store", || {
            state.flows(&FlowQuery::default()).len() == 2
        })
        .await;
        *lock(&records) = vec![
            update(allowed.0, allowed.1, true).record,
            update(denied.0, denied.1, true).record,
        ];
        stop.cancel();
    };
    let (flows, ()) = tokio::join!(run, drive);
    let flows = flows.unwrap();

    // Only node-1's pods are this node's.
    let mut here = lock(&local).clone();
    here.sort();
    assert_eq!(
        here,
        ["10.244.0.2", "10.244.0.3"].map(|a| a.parse::<IpAddr>().unwrap())
    );
    let mut seen: Vec<(String, String, bool, Option<FlowState>)> = flows
        .iter()
        .map(|f| {
            let name = |e: &Endpoint| e.pod.clone().unwrap_or_default();
            (
                name(&f.flow.src),
                name(&f.flow.dst),
                f.verdict.as_ref().expect("judged").allowed,
                f.flow.state,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "batch-1".into(),
                "db-1".into(),
                false,
                Some(FlowState::Closed)
            ),
            ("web-1".into(), "db-1".into(), true, Some(FlowState::Closed)),
        ]
    );
}
