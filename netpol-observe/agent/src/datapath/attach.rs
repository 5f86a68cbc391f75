//! Attaching the TC programs to interfaces and detaching them.
//!
//! On kernels with tcx (≥ 6.6) each interface gets two tcx links put before any existing
//! programs: a CNI's program ends the chain with its verdict (`TCX_PASS`, a redirect), so
//! after it ours would never run; ours return "next", so the CNI's still run, on the packet
//! unchanged. Older kernels get classic clsact filters with an automatic priority, which the
//! kernel also puts before existing filters; a clsact qdisc the datapath had to add is
//! remembered and removed again on detach.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use netpol_observe_ebpf::{PROG_TC_EGRESS, PROG_TC_INGRESS};

use super::{Cause, DatapathError};

/// How programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx links (kernel ≥ 6.6).
    Tcx,
    /// clsact qdisc + direct-action filters (older kernels).
    Clsact,
}

impl AttachMode {
    /// tcx where the kernel has it (≥ 6.6), clsact otherwise.
    pub(crate) fn for_this_kernel() -> AttachMode {
        if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            AttachMode::Tcx
        } else {
            AttachMode::Clsact
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcx" => Ok(AttachMode::Tcx),
            "clsact" => Ok(AttachMode::Clsact),
            _ => Err(format!("attach mode {s:?} is neither tcx nor clsact")),
        }
    }
}

/// An interface the programs are attached to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttachedInterface {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// How the programs are attached.
    pub mode: AttachMode,
}

#[derive(Debug)]
struct Attached {
    name: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
    added_clsact: bool,
}

/// Owns the loaded object's programs and their links.
#[derive(Debug)]
pub(crate) struct Attacher {
    ebpf: Ebpf,
    /// Program names attached to the ingress and the egress hook.
    programs: [&'static str; 2],
    mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
}

impl Attacher {
    /// Loads the flow programs into the kernel, to be attached in `mode`.
    pub(crate) fn new(ebpf: Ebpf, mode: AttachMode) -> Result<Self, DatapathError> {
        Self::with_programs(ebpf, [PROG_TC_INGRESS, PROG_TC_EGRESS], mode)
    }

    /// Loads `programs` (attached to the ingress and the egress hook; one program may serve
    /// both) into the kernel, to be attached in `mode`.
    pub(crate) fn with_programs(
        mut ebpf: Ebpf,
        programs: [&'static str; 2],
        mode: AttachMode,
    ) -> Result<Self, DatapathError> {
        for (i, name) in programs.into_iter().enumerate() {
            if i == 1 && name == programs[0] {
                continue;
            }
            let program = prog(&mut ebpf, name)?;
            super::retry_interrupted_load(|| program.load())
                .map_err(|e| DatapathError::load(format!("program {name}"), e))?;
        }
        Ok(Attacher {
            ebpf,
            programs,
            mode,
            attached: BTreeMap::new(),
        })
    }

    /// Attaches both programs to interface `name` (index `ifindex`); a no-op when attached.
    pub(crate) fn attach(&mut self, ifindex: u32, name: &str) -> Result<(), DatapathError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let err = |step: String, source: Cause| DatapathError::Attach {
            interface: name.to_owned(),
            step,
            source,
        };
        let mut added_clsact = false;
        let [ingress_prog, egress_prog] = self.programs;
        if self.mode == AttachMode::Clsact {
            match tc::qdisc_add_clsact(name) {
                Ok(()) => added_clsact = true,
                Err(e) if is_exists(&e) => {
                    // Filters of ours left by an agent that was killed (SIGKILL, OOM): unlike
                    // tcx links they outlive the process. One agent per node (the DaemonSet),
                    // so filters with our programs' names are stale; the qdisc was probably
                    // added by that agent too, and is deleted at exit unless others use it.
                    let mut stale = false;
                    for (ty, program) in [
                        (TcAttachType::Ingress, ingress_prog),
                        (TcAttachType::Egress, egress_prog),
                    ] {
                        match tc::qdisc_detach_program(name, ty, program) {
                            Ok(()) => stale = true,
                            Err(tc::TcError::IoError(e))
                                if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(err(
                                    format!(
                                        "removing a stale {program} filter left by a killed agent"
                                    ),
                                    e.into(),
                                ));
                            }
                        }
                    }
                    if stale {
                        tracing::info!(
                            interface = name,
                            "removed the filters a killed agent left behind"
                        );
                        added_clsact = true;
                    }
                }
                Err(e) => return Err(err("adding the clsact qdisc".into(), e.into())),
            }
        }
        let ingress = self.attach_one(ingress_prog, name, TcAttachType::Ingress)?;
        let egress = match self.attach_one(egress_prog, name, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                if let Ok(p) = prog(&mut self.ebpf, ingress_prog) {
                    let _ = p.detach(ingress);
                }
                return Err(e);
            }
        };
        tracing::debug!(interface = name, ifindex, mode = ?self.mode, "attached");
        self.attached.insert(
            ifindex,
            Attached {
                name: name.to_owned(),
                ingress,
                egress,
                added_clsact,
            },
        );
        Ok(())
    }

    fn attach_one(
        &mut self,
        program: &str,
        name: &str,
        ty: TcAttachType,
    ) -> Result<SchedClassifierLinkId, DatapathError> {
        let options = match self.mode {
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
            AttachMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
        };
        prog(&mut self.ebpf, program)?
            .attach_with_options(name, ty, options)
            .map_err(|e| DatapathError::Attach {
                interface: name.to_owned(),
                step: format!("attaching {program}"),
                source: e.into(),
            })
    }

    /// Detaches from `ifindex`. When the interface is already gone (`gone`), the kernel has
    /// dropped the attachment and only our handles are released. Returns the interface name
    /// when a clsact qdisc we added must be deleted.
    pub(crate) fn detach(&mut self, ifindex: u32, gone: bool) -> Option<(u32, String)> {
        let a = self.attached.remove(&ifindex)?;
        let [ingress_prog, egress_prog] = self.programs;
        for (program, link) in [(ingress_prog, a.ingress), (egress_prog, a.egress)] {
            let Ok(p) = prog(&mut self.ebpf, program) else {
                continue;
            };
            match p.take_link(link) {
                Ok(link) => {
                    if !gone {
                        force_detach(&link);
                    }
                    drop(link);
                }
                Err(e) if !gone => tracing::warn!(interface = %a.name, "detaching {program}: {e}"),
                Err(_) => {}
            }
        }
        tracing::debug!(interface = %a.name, ifindex, gone, "detached");
        (a.added_clsact && !gone).then_some((ifindex, a.name))
    }

    /// Detaches from every interface; returns the clsact qdiscs to delete.
    pub(crate) fn detach_all(&mut self) -> Vec<(u32, String)> {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        all.into_iter()
            .filter_map(|i| self.detach(i, false))
            .collect()
    }

    /// The interfaces attached now.
    pub(crate) fn interfaces(&self) -> Vec<AttachedInterface> {
        self.attached
            .iter()
            .map(|(i, a)| AttachedInterface {
                name: a.name.clone(),
                ifindex: *i,
                mode: self.mode,
            })
            .collect()
    }

    /// Whether `ifindex` is attached.
    pub(crate) fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// The loaded object (for the flow cache flush, which runs a program of it).
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object (for aya-log).
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(|e| DatapathError::load(format!("program {name}"), e))
}

/// Detaches a tcx link in the kernel at once (`BPF_LINK_DETACH`), even if another process
/// still holds a descriptor of it (e.g. a child forked while the link was open); dropping our
/// descriptor alone would leave the program attached until every copy is closed. Netlink
/// (clsact) attachments are removed when the aya link is dropped.
fn force_detach(link: &SchedClassifierLink) {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let Ok(fd_link) = <&FdLink>::try_from(link) else {
        return;
    };
    let Ok(info) = fd_link.info() else {
        return;
    };
    let get = GetFdById {
        id: info.id(),
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: `get` is a valid `bpf_attr` prefix for BPF_LINK_GET_FD_BY_ID.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            &get as *const GetFdById,
            size_of::<GetFdById>(),
        )
    };
    if fd < 0 {
        return;
    }
    let detach = LinkDetach { link_fd: fd as u32 };
    // SAFETY: `detach` is a valid `bpf_attr` prefix for BPF_LINK_DETACH; `fd` is ours and
    // closed right after.
    unsafe {
        if libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            size_of::<LinkDetach>(),
        ) != 0
        {
            tracing::debug!("BPF_LINK_DETACH: {}", std::io::Error::last_os_error());
        }
        libc::close(fd as i32);
    }
}

/// Whether adding the clsact qdisc failed because the interface already has one (`EEXIST`;
/// the kernel's message then says "Exclusivity flag on, cannot modify").
fn is_exists(e: &tc::TcError) -> bool {
    match e {
        tc::TcError::AlreadyAttached => true,
        tc::TcError::NetlinkError(n) => n.raw_os_error() == Some(libc::EEXIST),
        _ => false,
    }
}
