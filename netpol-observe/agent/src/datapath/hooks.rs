//! Measuring the hooks themselves (used by `cargo xtask bench datapath`): a no-op program
//! attached exactly like the flow programs — the fixed cost of tcx hooks on an interface —
//! and the kernel's run statistics (`run_cnt`, `run_time_ns`, with
//! `kernel.bpf_stats_enabled=1`) of the programs attached to an interface.

use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TcAttachType},
};
use netpol_observe_ebpf::PROG_TC_NOOP;

use super::{
    DatapathError, EBPF_OBJECT,
    attach::{AttachMode, Attacher},
    links,
};

/// The no-op program attached to the ingress and egress hooks of some interfaces; detached
/// by [`NoopHooks::detach`] (or, without clsact clean-up, on drop).
#[derive(Debug)]
pub struct NoopHooks {
    attacher: Attacher,
    netlink: rtnetlink::Handle,
}

impl NoopHooks {
    /// Loads the no-op program and attaches it to every present interface matching
    /// `matches`; returns the hooks and the names of the interfaces attached.
    pub async fn attach(
        matches: impl Fn(&str) -> bool,
    ) -> Result<(NoopHooks, Vec<String>), DatapathError> {
        let ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| DatapathError::load("the eBPF object", e))?;
        let mut attacher = Attacher::with_programs(
            ebpf,
            [PROG_TC_NOOP, PROG_TC_NOOP],
            AttachMode::for_this_kernel(),
        )?;
        let (present, _messages, netlink) = links::subscribe().await?;
        let mut names = Vec::new();
        for (index, name) in &present {
            if matches(name) {
                attacher.attach(*index, name)?;
                names.push(name.clone());
            }
        }
        Ok((NoopHooks { attacher, netlink }, names))
    }

    /// Detaches from every interface (deleting clsact qdiscs it added).
    pub async fn detach(mut self) -> Result<(), DatapathError> {
        for (ifindex, _) in self.attacher.detach_all() {
            links::delete_clsact(&self.netlink, ifindex).await?;
        }
        Ok(())
    }
}

/// Run statistics of one program attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HookStats {
    /// The interface.
    pub interface: String,
    /// `ingress` or `egress`.
    pub hook: &'static str,
    /// Kernel program id.
    pub id: u32,
    /// Program name (truncated by the kernel to 15 bytes).
    pub name: String,
    /// Runs counted while `kernel.bpf_stats_enabled` was 1.
    pub run_count: u64,
    /// Nanoseconds spent in those runs.
    pub run_time_ns: u64,
    /// Size of the verified (translated) program in bytes, when the kernel says.
    pub xlated_bytes: Option<u32>,
    /// Size of the JIT-compiled program in bytes.
    pub jited_bytes: u32,
}

/// The tcx programs attached to `interface` (both hooks) with their run statistics.
pub fn tcx_stats(interface: &str) -> Result<Vec<HookStats>, DatapathError> {
    let mut out = Vec::new();
    for (ty, hook) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let (_, programs) =
            SchedClassifier::query_tcx(interface, ty).map_err(|e| DatapathError::Query {
                what: format!("the tcx {hook} hook of {interface}"),
                source: e.into(),
            })?;
        for p in programs {
            out.push(HookStats {
                interface: interface.to_owned(),
                hook,
                id: p.id(),
                name: String::from_utf8_lossy(p.name()).into_owned(),
                run_count: p.run_count(),
                run_time_ns: u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                xlated_bytes: p.size_translated(),
                jited_bytes: p.size_jitted(),
            });
        }
    }
    Ok(out)
}
