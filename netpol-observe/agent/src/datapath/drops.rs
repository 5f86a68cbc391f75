//! Userspace side of the drop tracepoint: resolves `struct sk_buff` offsets and the kernel's
//! `enum skb_drop_reason` from BTF, loads the `kfree_skb` `tp_btf` program with the offsets as
//! globals and the wanted reasons enabled, and reads the in-kernel (flow, reason) aggregation
//! as deltas.
//!
//! The tracepoint sees every drop of the kernel. [`DropScope::Kernel`] counts them all (a real
//! node: one kernel per node); [`DropScope::Netns`] only those whose device (`skb->dev`) is in
//! the caller's network namespace (several simulated nodes on one kernel, each a namespace with
//! its own agent, as `netpol-observe lab` runs them).
//!
//! ```no_run
//! # fn demo() -> Result<(), netpol_observe_agent::datapath::DropsError> {
//! use netpol_observe_agent::datapath::{DropScope, DropTracer};
//! let mut tracer = DropTracer::start(&["NETFILTER_DROP".to_owned()], false, DropScope::Kernel)?;
//! for d in tracer.read()? {
//!     println!("{} {}:{} -> {}:{} {} x{}", d.protocol, d.src, d.src_port, d.dst, d.dst_port, d.reason, d.packets);
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::BtfTracePoint,
};
use netpol_observe_ebpf::{
    DropKey, DropValue, FAMILY_V4, MAP_COUNTERS, MAP_EVENTS, MAP_FLOWS, MAP_LOCAL_ENDPOINTS,
    drop::{
        DEFAULT_DROPS_CAPACITY, DROP_REASONS_LEN, GLOBAL_DROP_NETNS_INUM,
        GLOBAL_NET_DEVICE_OFF_NET, GLOBAL_NET_OFF_NS_INUM, GLOBAL_SKB_OFF_DEV, GLOBAL_SKB_OFF_HEAD,
        GLOBAL_SKB_OFF_LEN, GLOBAL_SKB_OFF_NETWORK_HEADER, GLOBAL_SKB_OFFSETS_SET,
        MAP_DROP_REASONS, MAP_DROPS, PROG_KFREE_SKB, TRACEPOINT_KFREE_SKB,
    },
};

use super::btf::{Btf, BtfError};
use crate::flow::Protocol;

/// Prefix of the drop reason names in `enum skb_drop_reason`.
pub(crate) const REASON_PREFIX: &str = "SKB_DROP_REASON_";

/// The network namespace of the calling thread (a thread may have entered another namespace
/// than its process': `/proc/self` would name the process').
pub(crate) const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Which drops of the kernel are counted.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DropScope {
    /// Every drop of the kernel: a real node, one kernel per node (the default).
    #[default]
    Kernel,
    /// Only drops whose device (`skb->dev`) is in the network namespace of the thread that
    /// starts the tracer: several simulated nodes on one kernel, each a namespace with its own
    /// agent. A drop of a packet without a device is not counted.
    Netns,
}

impl std::fmt::Display for DropScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropScope::Kernel => "kernel",
            DropScope::Netns => "netns",
        })
    }
}

/// What can go wrong with drop tracing.
#[derive(Debug, thiserror::Error)]
pub enum DropsError {
    /// The kernel's BTF is missing or lacks what the program needs.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// A configured reason is not in this kernel's `enum skb_drop_reason`.
    #[error(
        "drop reason {0} is not in this kernel's enum skb_drop_reason (known: {1}); fix --drop-reasons"
    )]
    UnknownReason(String, String),
    /// Loading or attaching the program failed.
    #[error("drop tracepoint: {0} (root or CAP_BPF+CAP_PERFMON needed, and tp_btf support)")]
    Load(String),
    /// Reading the drops map failed.
    #[error("reading the drops map: {0}")]
    Read(String),
    /// `--drop-scope netns`: the calling thread's network namespace cannot be read.
    #[error("--drop-scope netns: cannot read the network namespace {path}")]
    Netns {
        /// The namespace file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--drop-scope netns`: the kernel's BTF lacks a member the namespace filter reads.
    #[error(
        "--drop-scope netns: cannot find a device's network namespace in the kernel BTF \
         (use --drop-scope kernel)"
    )]
    NetnsLayout(#[source] BtfError),
}

/// Drops of one flow for one reason since the previous [`DropTracer::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSample {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Sender of the dropped packets.
    pub src: IpAddr,
    /// Sender port (0 for ICMP other than echo).
    pub src_port: u16,
    /// Destination of the dropped packets.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// The kernel's drop reason name without `SKB_DROP_REASON_` (e.g. `NETFILTER_DROP`).
    pub reason: String,
    /// Packets dropped since the previous read.
    pub packets: u64,
}

/// The `sk_buff` member offsets the program needs, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `head`.
    pub head: u32,
    /// `network_header`.
    pub network_header: u32,
    /// `len`.
    pub len: u32,
}

impl SkbOffsets {
    /// Resolves the offsets from `btf`.
    pub(crate) fn from_btf(btf: &Btf) -> Result<SkbOffsets, BtfError> {
        Ok(SkbOffsets {
            head: btf.member_offset("sk_buff", "head")?,
            network_header: btf.member_offset("sk_buff", "network_header")?,
            len: btf.member_offset("sk_buff", "len")?,
        })
    }
}

/// The offsets the namespace filter ([`DropScope::Netns`]) follows from a dropped `sk_buff`
/// to its device's namespace inode, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `sk_buff.dev` (a `struct net_device *`; inside anonymous unions and structs).
    pub skb_dev: u32,
    /// `net_device.nd_net.net` (a `struct net *`; `nd_net` is a `possible_net_t`).
    pub dev_net: u32,
    /// `net.ns.inum` (a `u32`; `ns` is an embedded `struct ns_common`).
    pub net_inum: u32,
}

impl NetnsOffsets {
    /// Resolves the offsets from `btf`.
    pub(crate) fn from_btf(btf: &Btf) -> Result<NetnsOffsets, BtfError> {
        Ok(NetnsOffsets {
            skb_dev: btf.member_offset("sk_buff", "dev")?,
            dev_net: btf.member_offset("net_device", "nd_net.net")?,
            net_inum: btf.member_offset("net", "ns.inum")?,
        })
    }
}

/// The inode number of the calling thread's network namespace ([`OWN_NETNS`]): what
/// `ns_common.inum` of its `struct net` holds.
pub fn own_netns_inode() -> Result<u32, DropsError> {
    let meta = std::fs::metadata(OWN_NETNS).map_err(|source| DropsError::Netns {
        path: OWN_NETNS.to_owned(),
        source,
    })?;
    u32::try_from(meta.ino()).map_err(|_| DropsError::Netns {
        path: OWN_NETNS.to_owned(),
        source: std::io::Error::other(format!(
            "inode {} does not fit the kernel's 32-bit ns_common.inum",
            meta.ino()
        )),
    })
}

/// The drop reasons of this kernel (`value → name` without prefix), from BTF.
pub fn kernel_drop_reasons(btf: &Btf) -> Result<BTreeMap<u32, String>, BtfError> {
    Ok(btf
        .enum_values("skb_drop_reason")?
        .into_iter()
        .filter_map(|(name, v)| {
            let short = name.strip_prefix(REASON_PREFIX)?;
            Some((u32::try_from(v).ok()?, short.to_owned()))
        })
        .collect())
}

/// The loaded and attached drop tracepoint. Dropping it detaches the program.
pub struct DropTracer {
    _ebpf: Ebpf,
    map: BpfHashMap<MapData, DropKey, DropValue>,
    names: HashMap<u32, String>,
    last: HashMap<DropKey, u64>,
}

impl std::fmt::Debug for DropTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropTracer")
            .field("reasons", &self.names)
            .finish_non_exhaustive()
    }
}

/// The drop reasons to count, by value: `reasons` (with or without the `SKB_DROP_REASON_`
/// prefix) this kernel has; one it lacks is an error when `strict`, else logged at debug.
fn reason_names(
    reasons: &[String],
    strict: bool,
    btf: &Btf,
) -> Result<HashMap<u32, String>, DropsError> {
    let known = kernel_drop_reasons(btf)?;
    let by_name: HashMap<&str, u32> = known.iter().map(|(v, n)| (n.as_str(), *v)).collect();
    let mut names = HashMap::new();
    let mut absent = Vec::new();
    for r in reasons {
        let short = r.strip_prefix(REASON_PREFIX).unwrap_or(r);
        match by_name.get(short) {
            Some(v) if *v < DROP_REASONS_LEN => {
                names.insert(*v, short.to_owned());
            }
            Some(_) | None if strict => {
                let list: Vec<&str> = known.values().map(String::as_str).collect();
                return Err(DropsError::UnknownReason(r.clone(), list.join(", ")));
            }
            // The defaults name reasons of several kernel versions: not a problem.
            _ => absent.push(r.as_str()),
        }
    }
    if !absent.is_empty() {
        tracing::debug!(reasons = ?absent, "default drop reasons this kernel does not have");
    }
    Ok(names)
}

/// Loads the eBPF object for drop tracing: the kernel's `sk_buff` (and, for a network
/// namespace scope, namespace) offsets set as its globals, the flow programs' maps minimal.
fn load_object(
    aya_btf: &aya::Btf,
    offsets: &SkbOffsets,
    netns_inum: u32,
    netns: &NetnsOffsets,
) -> Result<Ebpf, DropsError> {
    let one: u32 = 1;
    // The object also holds the flow programs' maps; this copy keeps them minimal.
    EbpfLoader::new()
        .btf(Some(aya_btf))
        .map_max_entries(MAP_FLOWS, 1)
        .map_max_entries(MAP_EVENTS, 4096)
        .map_max_entries(MAP_LOCAL_ENDPOINTS, 1)
        .map_max_entries(MAP_DROPS, DEFAULT_DROPS_CAPACITY)
        .override_global(GLOBAL_SKB_OFF_HEAD, &offsets.head, true)
        .override_global(GLOBAL_SKB_OFF_NETWORK_HEADER, &offsets.network_header, true)
        .override_global(GLOBAL_SKB_OFF_LEN, &offsets.len, true)
        .override_global(GLOBAL_SKB_OFFSETS_SET, &one, true)
        .override_global(GLOBAL_DROP_NETNS_INUM, &netns_inum, true)
        .override_global(GLOBAL_SKB_OFF_DEV, &netns.skb_dev, true)
        .override_global(GLOBAL_NET_DEVICE_OFF_NET, &netns.dev_net, true)
        .override_global(GLOBAL_NET_OFF_NS_INUM, &netns.net_inum, true)
        .load(super::EBPF_OBJECT)
        .map_err(|e| DropsError::Load(e.to_string()))
}

/// Turns on counting of the reasons `names` in the program's reason table.
fn enable_reasons(ebpf: &mut Ebpf, names: &HashMap<u32, String>) -> Result<(), DropsError> {
    let mut enabled: Array<_, u32> = ebpf
        .map_mut(MAP_DROP_REASONS)
        .ok_or_else(|| DropsError::Load(format!("map {MAP_DROP_REASONS} missing")))?
        .try_into()
        .map_err(|e: aya::maps::MapError| DropsError::Load(e.to_string()))?;
    for v in names.keys() {
        enabled
            .set(*v, 1, 0)
            .map_err(|e| DropsError::Load(format!("enabling reason {v}: {e}")))?;
    }
    Ok(())
}

/// Loads the `kfree_skb` program and attaches it to its tracepoint.
fn attach_tracepoint(ebpf: &mut Ebpf, aya_btf: &aya::Btf) -> Result<(), DropsError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(PROG_KFREE_SKB)
        .ok_or_else(|| DropsError::Load(format!("program {PROG_KFREE_SKB} missing")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DropsError::Load(e.to_string()))?;
    super::retry_interrupted_load(|| prog.load(TRACEPOINT_KFREE_SKB, aya_btf))
        .map_err(|e| DropsError::Load(format!("loading {PROG_KFREE_SKB}: {e}")))?;
    prog.attach()
        .map_err(|e| DropsError::Load(format!("attaching to {TRACEPOINT_KFREE_SKB}: {e}")))?;
    Ok(())
}

impl DropTracer {
    /// Resolves offsets and reasons from `/sys/kernel/btf/vmlinux`, loads and attaches the
    /// program counting `reasons`. A reason unknown to this kernel is an error when `strict`,
    /// else skipped with a warning (the defaults name reasons of several kernel versions).
    /// With [`DropScope::Netns`] only drops whose device is in the calling thread's network
    /// namespace are counted (the namespace is fixed at start).
    pub fn start(
        reasons: &[String],
        strict: bool,
        scope: DropScope,
    ) -> Result<DropTracer, DropsError> {
        let btf = Btf::from_sys_fs()?;
        let offsets = SkbOffsets::from_btf(&btf)?;
        // Kernel scope needs none of the namespace layout (0 turns the filter off).
        let (netns_inum, netns_offsets) = match scope {
            DropScope::Kernel => (0, None),
            DropScope::Netns => (
                own_netns_inode()?,
                Some(NetnsOffsets::from_btf(&btf).map_err(DropsError::NetnsLayout)?),
            ),
        };
        let unset = NetnsOffsets {
            skb_dev: 0,
            dev_net: 0,
            net_inum: 0,
        };
        let netns = netns_offsets.unwrap_or(unset);
        let names = reason_names(reasons, strict, &btf)?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| DropsError::Load(e.to_string()))?;
        let mut ebpf = load_object(&aya_btf, &offsets, netns_inum, &netns)?;
        let _ = MAP_COUNTERS;
        enable_reasons(&mut ebpf, &names)?;
        let map: BpfHashMap<MapData, DropKey, DropValue> = ebpf
            .take_map(MAP_DROPS)
            .ok_or_else(|| DropsError::Load(format!("map {MAP_DROPS} missing")))?
            .try_into()
            .map_err(|e: aya::maps::MapError| DropsError::Load(e.to_string()))?;
        attach_tracepoint(&mut ebpf, &aya_btf)?;
        tracing::info!(
            reasons = ?names.values().collect::<Vec<_>>(),
            ?offsets,
            %scope,
            netns_inode = (scope == DropScope::Netns).then_some(netns_inum),
            ?netns_offsets,
            "drop tracepoint attached"
        );
        Ok(DropTracer {
            _ebpf: ebpf,
            map,
            names,
            last: HashMap::new(),
        })
    }

    /// The reason names being counted.
    pub fn reasons(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.values().cloned().collect();
        v.sort();
        v
    }

    /// The drops since the previous call, per (flow as the packets went, reason).
    pub fn read(&mut self) -> Result<Vec<DropSample>, DropsError> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(self.last.len());
        for item in self.map.iter() {
            let (k, v) = item.map_err(|e| DropsError::Read(e.to_string()))?;
            let prev = self.last.get(&k).copied().unwrap_or(0);
            // A smaller total means the LRU evicted and re-created the entry.
            let delta = if v.packets >= prev {
                v.packets - prev
            } else {
                v.packets
            };
            seen.insert(k, v.packets);
            if delta == 0 {
                continue;
            }
            let Some(protocol) = Protocol::from_ip_number(k.proto) else {
                continue;
            };
            out.push(DropSample {
                protocol,
                src: addr(&k.src, k.family),
                src_port: k.src_port,
                dst: addr(&k.dst, k.family),
                dst_port: k.dst_port,
                reason: self
                    .names
                    .get(&k.reason)
                    .cloned()
                    .unwrap_or_else(|| format!("REASON_{}", k.reason)),
                packets: delta,
            });
        }
        self.last = seen;
        Ok(out)
    }
}

fn addr(b: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names() {
        use clap::ValueEnum;
        assert_eq!(DropScope::default(), DropScope::Kernel);
        for s in DropScope::value_variants() {
            assert_eq!(DropScope::from_str(&s.to_string(), false).unwrap(), *s);
            let yaml = crate::yaml::to_string(s).unwrap();
            assert_eq!(yaml.trim(), s.to_string());
        }
    }

    /// The inode of this thread's namespace is the one `/proc/<pid>/task/<tid>/ns/net` names
    /// (the test threads never leave the process' namespace), and the running kernel's BTF has
    /// the layout the filter follows.
    #[test]
    fn own_namespace_and_its_layout() {
        let inum = own_netns_inode().unwrap();
        let process = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(inum), process);
        let link = std::fs::read_link(OWN_NETNS).unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{inum}]"));
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no {}", super::super::btf::VMLINUX_BTF);
            return;
        };
        let o = NetnsOffsets::from_btf(&btf).unwrap();
        assert_eq!(o.skb_dev, btf.member_offset("sk_buff", "dev").unwrap());
        assert!(o.dev_net > 0 && o.net_inum > 0, "{o:?}");
    }
}
