//! Reading the kernel maps: batched reads of the flow map and the per-CPU counters, and the
//! per-CPU flush of the flow map's front entries that precedes every read.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use aya::{
    Ebpf, RawTracePointRunOptions, TestRun,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{ProgramError, RawTracePoint},
    sys::SyscallError,
};
use netpol_observe_ebpf::{Counter, FlowKey, FlowValue, PROG_FLUSH_FLOW_CACHE};

use super::DatapathError;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Runs the `flush_flow_cache` program on every CPU: the programs keep the counts of the
/// established TCP/UDP flows that hold one of the CPU's front entries (`FLOW_CACHE`,
/// 2048 IPv4 and 256 IPv6 per CPU, in sets of two) instead of updating the flow map per packet, and this moves them into the flow map;
/// it also ends what the CPU remembers of which endpoints are local (needed after every
/// change of the local-endpoint map). The program is loaded but never attached; aya's
/// [`TestRun`] for raw tracepoints with a CPU (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_RUN_ON_CPU`, Linux >= 5.10) runs it on the CPU that owns the entries; it
/// walks them with `bpf_loop` (Linux >= 5.17).
///
/// The program stays in the [`Ebpf`] object (aya 0.14 cannot take a program out of it, and
/// a second handle by program id needs `CAP_SYS_ADMIN`, which the agent does not have), so
/// [`CacheFlusher::flush`] is given the object.
#[derive(Debug)]
pub(crate) struct CacheFlusher {
    cpus: Vec<u32>,
}

impl CacheFlusher {
    /// Loads the flush program into `ebpf` and checks that it runs on every online CPU.
    pub(crate) fn load(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let what = format!("program {PROG_FLUSH_FLOW_CACHE}");
        let prog: &mut RawTracePoint = ebpf
            .program_mut(PROG_FLUSH_FLOW_CACHE)
            .ok_or_else(|| DatapathError::Missing(what.clone()))?
            .try_into()
            .map_err(|e: ProgramError| DatapathError::load(what.clone(), e))?;
        super::retry_interrupted_load(|| prog.load())
            .map_err(|e| DatapathError::load(what.clone(), e))?;
        let cpus = aya::util::online_cpus().map_err(|(path, e)| DatapathError::load(path, e))?;
        let flusher = CacheFlusher { cpus };
        flusher.flush(ebpf).map_err(|e| {
            DatapathError::load(
                format!(
                    "{what}: running it on each CPU (BPF_F_TEST_RUN_ON_CPU needs Linux >= 5.10)"
                ),
                e,
            )
        })?;
        Ok(flusher)
    }

    /// Flushes every CPU's slots with the flush program loaded in `ebpf`; returns how many
    /// were busy (an interrupted program was changing them: their counts move at the next
    /// flush).
    pub(super) fn flush(&self, ebpf: &Ebpf) -> io::Result<u32> {
        let prog: &RawTracePoint = ebpf
            .program(PROG_FLUSH_FLOW_CACHE)
            .ok_or_else(|| io::Error::other(format!("{PROG_FLUSH_FLOW_CACHE} not in the object")))?
            .try_into()
            .map_err(io::Error::other)?;
        let mut busy = 0;
        for &cpu in &self.cpus {
            let run = prog
                .test_run(RawTracePointRunOptions {
                    cpu: Some(cpu),
                    ..RawTracePointRunOptions::new()
                })
                .map_err(|e| match e {
                    // aya's message names only the call: keep the kernel's answer.
                    ProgramError::SyscallError(SyscallError { io_error, .. }) => {
                        io::Error::new(io_error.kind(), format!("CPU {cpu}: {io_error}"))
                    }
                    e => io::Error::other(format!("CPU {cpu}: {e}")),
                })?;
            busy += run.return_value;
        }
        Ok(busy)
    }
}

/// `union bpf_attr` as used by `BPF_MAP_*_BATCH` (the `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of the flow map with `BPF_MAP_LOOKUP_BATCH` (falls back to key-by-key
/// iteration where the kernel lacks batch operations).
#[derive(Debug)]
pub(crate) struct FlowMapReader {
    fd: OwnedFd,
    chunk: usize,
    batch_supported: bool,
    keys: Vec<FlowKey>,
    values: Vec<FlowValue>,
}

impl FlowMapReader {
    /// A reader over the map behind `fd` (a duplicate of the flow map's descriptor).
    pub(super) fn new(fd: OwnedFd, capacity: u32) -> Self {
        let chunk = (capacity as usize).clamp(64, 4096);
        FlowMapReader {
            fd,
            chunk,
            batch_supported: true,
            keys: vec![FlowKey::default(); chunk],
            values: vec![FlowValue::default(); chunk],
        }
    }

    /// Calls `f` with every entry; `map` serves the fallback path.
    pub(super) fn for_each(
        &mut self,
        map: &BpfHashMap<MapData, FlowKey, FlowValue>,
        mut f: impl FnMut(&FlowKey, &FlowValue),
    ) -> Result<(), DatapathError> {
        if self.batch_supported {
            match self.batch(&mut f) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                    tracing::info!("BPF_MAP_LOOKUP_BATCH unsupported ({e}); reading key by key");
                    self.batch_supported = false;
                }
                Err(e) => {
                    return Err(DatapathError::MapRead {
                        what: "the flow map".into(),
                        source: e.into(),
                    });
                }
            }
        }
        for item in map.iter() {
            match item {
                Ok((k, v)) => f(&k, &v),
                // The entry went away between the key walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(DatapathError::MapRead {
                        what: "the flow map".into(),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn batch(&mut self, f: &mut impl FnMut(&FlowKey, &FlowValue)) -> io::Result<()> {
        // The hash-map batch token is a bucket index (u32); 8 bytes leave room.
        let mut token = [0u64; 1];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: token.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` points at buffers of `chunk` keys and values and a token that
            // outlive the call; the kernel writes at most `count` elements.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let n = (attr.count as usize).min(self.chunk);
            match &err {
                Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                    // One bucket holds more entries than a chunk: grow and retry.
                    self.chunk *= 2;
                    self.keys.resize(self.chunk, FlowKey::default());
                    self.values.resize(self.chunk, FlowValue::default());
                    continue;
                }
                Some(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(io::Error::new(e.kind(), e.to_string()));
                }
                _ => {}
            }
            for i in 0..n {
                f(&self.keys[i], &self.values[i]);
            }
            if err.is_some() {
                // ENOENT: the walk is complete.
                return Ok(());
            }
            first = false;
        }
    }
}

/// Totals of the kernel-side counters (summed over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounters {
    values: Vec<u64>,
}

impl KernelCounters {
    /// Reads the per-CPU counters array.
    pub(crate) fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self, DatapathError> {
        let mut values = vec![0; Counter::ALL.len()];
        for c in Counter::ALL {
            let per_cpu = map
                .get(&(c as u32), 0)
                .map_err(|e| DatapathError::MapRead {
                    what: format!("counter {}", c.name()),
                    source: e.into(),
                })?;
            values[c as usize] = per_cpu.iter().sum();
        }
        Ok(KernelCounters { values })
    }

    /// The value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.values.get(c as usize).copied().unwrap_or(0)
    }

    /// Every counter with its value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}
