//! What the agent's loop takes from the node: flow updates, DNS answers and kernel drops
//! ([`Capture`]). [`KernelCapture`] is the real one (the eBPF datapath and the drop
//! tracepoint, root only); tests drive the same loop with a fake.

use std::{future::Future, net::IpAddr};

use tokio::sync::broadcast;

use super::{AgentConfig, AgentError};
use crate::{
    datapath::{
        Datapath, DatapathError, DatapathStats, DnsAnswer, DropSample, DropTracer, DropsError,
        FlowUpdate, KernelCounters,
    },
    flow::FlowRecord,
};

/// A source of what happens on the node's pod interfaces, as the agent's loop uses it.
pub trait Capture: Send {
    /// Flow updates (new, changed, ended flows), each once.
    fn subscribe(&self) -> broadcast::Receiver<FlowUpdate>;
    /// DNS answers the pods received.
    fn subscribe_dns(&self) -> broadcast::Receiver<DnsAnswer>;
    /// Names of the interfaces watched.
    fn interfaces(&self) -> Vec<String>;
    /// The addresses of this node's pods (the datapath skips one of a same-node flow's two
    /// sightings).
    fn set_local_endpoints(&self, ips: &[IpAddr]) -> Result<(), DatapathError>;
    /// The flow table's figures.
    fn stats(&self) -> DatapathStats;
    /// The kernel side's counters (losses, errors).
    fn kernel_counters(&self) -> Result<KernelCounters, DatapathError>;
    /// Kernel drops since the last call (none when drops are not traced).
    fn read_drops(&mut self) -> Result<Vec<DropSample>, DropsError>;
    /// Stops watching: a last sweep, every flow's final record and the last drops.
    fn shutdown(self) -> impl Future<Output = Result<CaptureEnd, DatapathError>> + Send;
}

/// What a capture hands over when it stops.
#[derive(Debug, Default)]
pub struct CaptureEnd {
    /// Every flow's final record (the last sweep's).
    pub records: Vec<FlowRecord>,
    /// The drops read after the last sweep.
    pub drops: Vec<DropSample>,
}

/// The real capture: the eBPF datapath and, with `drops`, the drop tracepoint.
pub struct KernelCapture {
    datapath: Datapath,
    drops: Option<DropTracer>,
}

impl std::fmt::Debug for KernelCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCapture")
            .field("interfaces", &self.interfaces())
            .field("drops", &self.drops.is_some())
            .finish_non_exhaustive()
    }
}

impl KernelCapture {
    /// Attaches the programs and the drop tracepoint as `config` says.
    pub async fn start(config: &AgentConfig) -> Result<Self, AgentError> {
        let datapath = Datapath::start(config.datapath()).await?;
        let drops = if config.drops {
            let strict = config.drop_reasons != AgentConfig::default().drop_reasons;
            match DropTracer::start(&config.drop_reasons, strict, config.drop_scope) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = datapath.shutdown().await;
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        Ok(KernelCapture { datapath, drops })
    }
}

impl Capture for KernelCapture {
    fn subscribe(&self) -> broadcast::Receiver<FlowUpdate> {
        self.datapath.subscribe()
    }

    fn subscribe_dns(&self) -> broadcast::Receiver<DnsAnswer> {
        self.datapath.subscribe_dns()
    }

    fn interfaces(&self) -> Vec<String> {
        self.datapath
            .attached_interfaces()
            .into_iter()
            .map(|i| i.name)
            .collect()
    }

    fn set_local_endpoints(&self, ips: &[IpAddr]) -> Result<(), DatapathError> {
        self.datapath.set_local_endpoints(ips)
    }

    fn stats(&self) -> DatapathStats {
        self.datapath.stats()
    }

    fn kernel_counters(&self) -> Result<KernelCounters, DatapathError> {
        self.datapath.kernel_counters()
    }

    fn read_drops(&mut self) -> Result<Vec<DropSample>, DropsError> {
        match self.drops.as_mut() {
            Some(t) => t.read(),
            None => Ok(Vec::new()),
        }
    }

    async fn shutdown(self) -> Result<CaptureEnd, DatapathError> {
        let KernelCapture { datapath, drops } = self;
        let records = datapath.shutdown().await?;
        // Drops after the flows of the last sweep, so they find their flows.
        let drops = match drops.map(|mut t| t.read()) {
            None => Vec::new(),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!("{}", crate::report::Chain(&e));
                Vec::new()
            }
        };
        Ok(CaptureEnd { records, drops })
    }
}
