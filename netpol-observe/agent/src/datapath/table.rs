//! The userspace flow table: merges ring-buffer events and flow-map sweeps into flow records.
//!
//! Pure logic (no syscalls), fed by the event reader and the sweeper, so it is unit-tested
//! here. Times are kernel monotonic nanoseconds (`bpf_ktime_get_ns`); [`Clock`] turns them
//! into wall-clock timestamps.
//!
//! A kernel entry is identified by its key *and* its incarnation (its `first_seen_ns`): when
//! the LRU map evicts an entry and the flow's next packet re-creates it, the table folds the
//! old incarnation's counters into the flow and counts an eviction, so counts are never lost
//! silently.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use jiff::Timestamp;
use netpol_observe_ebpf::{
    DIR_HI_TO_LO, DIR_LO_TO_HI, EVENT_ICMP_UNREACH, EVENT_RST, FAMILY_V4, FlowKey, FlowValue,
    INITIATOR_UNKNOWN, event_bits, tcp_flags,
};

use super::sockets::Sockets;
use crate::flow::{Directional, Endpoint, FlowRecord, FlowState, Protocol};

/// Converts kernel monotonic nanoseconds into wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock nanoseconds since the Unix epoch minus monotonic nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// A clock with the current offset between `CLOCK_REALTIME` and `CLOCK_MONOTONIC`.
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let wall = Timestamp::now().as_nanosecond();
        Clock {
            offset_ns: wall - mono,
        }
    }

    /// A clock with a fixed offset (tests).
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    /// The wall-clock time of kernel monotonic time `ns`.
    pub fn timestamp(&self, ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.offset_ns + ns as i128).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A change of one flow, published to subscribers (metrics) after each event and sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowUpdate {
    /// The flow as it is now (unattributed).
    pub record: FlowRecord,
    /// The flow was first seen with this update.
    pub new: bool,
    /// Packets since the previous update, from the initiator's point of view.
    pub delta_packets: Directional,
    /// Bytes since the previous update.
    pub delta_bytes: Directional,
    /// The flow ended (idle expiry or shutdown); no more updates follow for it.
    pub ended: bool,
    /// The datapath saw the flow open: for TCP, the initiator's SYN. A TCP connection picked up
    /// mid-stream (older than the agent, or back after its entry idled out of the table) was
    /// opened before the datapath watched it. Always true for the other protocols.
    pub opened: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    packets: [u64; 2],
    bytes: [u64; 2],
}

impl Counts {
    fn from_value(v: &FlowValue) -> Self {
        Counts {
            packets: v.packets,
            bytes: v.bytes,
        }
    }

    fn add(&mut self, o: &Counts) {
        for d in 0..2 {
            self.packets[d] += o.packets[d];
            self.bytes[d] += o.bytes[d];
        }
    }

    fn saturating_sub(&self, o: &Counts) -> Counts {
        let mut r = Counts::default();
        for d in 0..2 {
            r.packets[d] = self.packets[d].saturating_sub(o.packets[d]);
            r.bytes[d] = self.bytes[d].saturating_sub(o.bytes[d]);
        }
        r
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    initiator: u8,
    first_seen_ns: u64,
    last_seen_ns: u64,
    /// Counters of earlier (evicted) kernel incarnations.
    base: Counts,
    /// Last cumulative counters read from the current kernel incarnation.
    kernel: Counts,
    /// Counters already published in updates.
    published: Counts,
    /// `first_seen_ns` of the current kernel incarnation.
    incarnation: u64,
    /// Union of the flag words of every incarnation plus events from the ring buffer.
    flags: u64,
    /// The current incarnation is (as far as we know) in the kernel map.
    in_kernel: bool,
    /// Removed from the kernel by us (idle) or at shutdown; kept for `retention`.
    ended: bool,
    /// A `new` update was published.
    announced: bool,
    /// The `ended` update was published.
    end_published: bool,
}

/// What the sweeper does with a kernel entry after merging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAction {
    /// Leave it in the kernel map.
    Keep,
    /// Delete it from the kernel map: idle for longer than the idle timeout.
    Expire,
}

/// The flows known to userspace, keyed by canonical kernel key.
#[derive(Debug)]
pub struct FlowTable {
    flows: HashMap<FlowKey, Entry>,
    /// Flows that ended and whose key was then reused by a new flow.
    finished: Vec<(u64, FlowRecord)>,
    clock: Clock,
    node: Option<String>,
    evictions: u64,
    updates: Vec<FlowUpdate>,
    /// Listening and connected sockets, to orient flows first seen mid-stream.
    sockets: Sockets,
}

impl FlowTable {
    /// An empty table stamping records with `node`.
    pub fn new(clock: Clock, node: Option<String>) -> Self {
        FlowTable {
            flows: HashMap::new(),
            finished: Vec::new(),
            clock,
            node,
            evictions: 0,
            updates: Vec::new(),
            sockets: Sockets::default(),
        }
    }

    /// Replaces the socket snapshot that orients flows first seen mid-stream (see
    /// [`super::sockets`]); flows already tracked keep their orientation.
    pub(crate) fn set_sockets(&mut self, sockets: Sockets) {
        self.sockets = sockets;
    }

    /// Kernel entries lost to LRU eviction (detected when an announced flow vanished from the
    /// map, or came back as a new incarnation, without userspace deleting it).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Number of flows held (live and ended within retention).
    pub fn len(&self) -> usize {
        self.flows.len() + self.finished.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of flows believed to be in the kernel map.
    pub fn live(&self) -> usize {
        self.flows.values().filter(|e| e.in_kernel).count()
    }

    /// A ring-buffer event: `kind` is `EVENT_NEW`, `EVENT_FIN` or `EVENT_RST`.
    pub(crate) fn on_event(
        &mut self,
        key: &FlowKey,
        kind: u32,
        ts_ns: u64,
        initiator: u8,
        dir: u8,
    ) {
        if kind == netpol_observe_ebpf::EVENT_NEW {
            self.begin_incarnation(key, ts_ns, initiator);
        } else if let Some(e) = self.flows.get_mut(key) {
            let f = if kind == EVENT_RST {
                tcp_flags::RST
            } else {
                tcp_flags::FIN
            };
            e.flags |= event_bits(kind) | netpol_observe_ebpf::tcp_flag_bits(dir, f);
            e.last_seen_ns = e.last_seen_ns.max(ts_ns);
        }
    }

    /// Starts tracking incarnation `inc` of `key` (from an event or a sweep).
    fn begin_incarnation(&mut self, key: &FlowKey, inc: u64, initiator: u8) {
        if let Some(e) = self.flows.get_mut(key) {
            if e.incarnation == inc {
                return;
            }
            if !e.ended {
                if inc < e.incarnation {
                    // An event older than what a sweep already saw: nothing new.
                    return;
                }
                // The previous incarnation vanished without us deleting it: evicted.
                if e.in_kernel {
                    self.evictions += 1;
                }
                let kernel = e.kernel;
                e.base.add(&kernel);
                e.kernel = Counts::default();
                e.incarnation = inc;
                e.in_kernel = true;
                e.last_seen_ns = e.last_seen_ns.max(inc);
                return;
            }
        }
        if let Some(e) = self.flows.get(key) {
            // An ended flow whose tuple is reused: keep its record apart.
            let old = self.record(key, e);
            self.finished.push((e.last_seen_ns, old));
        }
        let initiator = match Protocol::from_ip_number(key.proto) {
            Some(protocol) => self.sockets.orient(
                protocol,
                (addr(&key.lo_addr, key.family), key.lo_port),
                (addr(&key.hi_addr, key.family), key.hi_port),
                initiator,
            ),
            None => initiator,
        };
        self.flows.insert(
            *key,
            Entry {
                initiator,
                first_seen_ns: inc,
                last_seen_ns: inc,
                base: Counts::default(),
                kernel: Counts::default(),
                published: Counts::default(),
                incarnation: inc,
                flags: 0,
                in_kernel: true,
                ended: false,
                announced: false,
                end_published: false,
            },
        );
    }

    /// Merges one kernel entry read by the sweeper at `now_ns`; says whether to expire it.
    pub(crate) fn on_sweep(
        &mut self,
        key: &FlowKey,
        value: &FlowValue,
        now_ns: u64,
        idle_timeout_ns: u64,
    ) -> SweepAction {
        self.begin_incarnation(key, value.first_seen_ns, value.initiator);
        let Some(e) = self.flows.get_mut(key) else {
            return SweepAction::Keep;
        };
        if e.incarnation != value.first_seen_ns {
            return SweepAction::Keep;
        }
        e.kernel = Counts::from_value(value);
        e.flags |= value.flags;
        e.in_kernel = true;
        e.last_seen_ns = e.last_seen_ns.max(value.last_seen_ns);
        if e.initiator == INITIATOR_UNKNOWN && value.initiator != INITIATOR_UNKNOWN {
            e.initiator = value.initiator;
        }
        if now_ns.saturating_sub(value.last_seen_ns) >= idle_timeout_ns {
            SweepAction::Expire
        } else {
            SweepAction::Keep
        }
    }

    /// After a sweep that started at `sweep_start_ns` and read every entry in `seen`
    /// (incarnations), marks flows missing from the map as evicted, ends the `expired` ones
    /// and idle flows that left the map, and publishes updates.
    pub(crate) fn finish_sweep(
        &mut self,
        seen: &HashMap<FlowKey, u64>,
        expired: &[FlowKey],
        sweep_start_ns: u64,
        now_ns: u64,
        idle_timeout_ns: u64,
        retention_ns: u64,
    ) {
        for (key, e) in self.flows.iter_mut() {
            if e.ended || !e.in_kernel {
                continue;
            }
            if seen.get(key) != Some(&e.incarnation) && e.incarnation < sweep_start_ns {
                self.evictions += 1;
                e.in_kernel = false;
            }
        }
        for key in expired {
            if let Some(e) = self.flows.get_mut(key) {
                e.ended = true;
                e.in_kernel = false;
            }
        }
        for e in self.flows.values_mut() {
            if !e.ended && !e.in_kernel && now_ns.saturating_sub(e.last_seen_ns) >= idle_timeout_ns
            {
                e.ended = true;
            }
        }
        self.publish();
        let cutoff = now_ns.saturating_sub(retention_ns);
        self.flows
            .retain(|_, e| !(e.ended && e.last_seen_ns < cutoff));
        self.finished.retain(|(last, _)| *last >= cutoff);
    }

    /// Ends every flow (shutdown) and publishes the final updates.
    pub(crate) fn end_all(&mut self) {
        for e in self.flows.values_mut() {
            e.ended = true;
            e.in_kernel = false;
        }
        self.publish();
    }

    /// Computes pending updates (new flows, counter deltas, ends) into the outbox.
    pub(crate) fn publish(&mut self) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for key in keys {
            let Some(e) = self.flows.get(&key) else {
                continue;
            };
            if e.end_published {
                continue;
            }
            let mut total = e.base;
            total.add(&e.kernel);
            let delta = total.saturating_sub(&e.published);
            let new = !e.announced;
            if !new && delta.is_zero() && !e.ended {
                continue;
            }
            let init = init_dir(&key, e.initiator) as usize;
            let update = FlowUpdate {
                record: self.record(&key, e),
                new,
                delta_packets: Directional {
                    sent: delta.packets[init],
                    received: delta.packets[init ^ 1],
                },
                delta_bytes: Directional {
                    sent: delta.bytes[init],
                    received: delta.bytes[init ^ 1],
                },
                ended: e.ended,
                opened: opened(key.proto, e.flags, init_dir(&key, e.initiator)),
            };
            if let Some(e) = self.flows.get_mut(&key) {
                e.published = total;
                e.announced = true;
                e.end_published = e.ended;
            }
            self.updates.push(update);
        }
    }

    /// Takes the updates computed since the last call.
    pub(crate) fn take_updates(&mut self) -> Vec<FlowUpdate> {
        std::mem::take(&mut self.updates)
    }

    /// Every flow held, as records, oldest first.
    pub fn snapshot(&self) -> Vec<FlowRecord> {
        let mut out: Vec<(u64, FlowRecord)> = self
            .flows
            .iter()
            .map(|(k, e)| (e.first_seen_ns, self.record(k, e)))
            .collect();
        out.extend(self.finished.iter().cloned());
        out.sort_by(|a, b| {
            a.1.first_seen
                .cmp(&b.1.first_seen)
                .then_with(|| a.0.cmp(&b.0))
        });
        out.into_iter().map(|(_, r)| r).collect()
    }

    fn record(&self, key: &FlowKey, e: &Entry) -> FlowRecord {
        let init = init_dir(key, e.initiator);
        let mut total = e.base;
        total.add(&e.kernel);
        let protocol = Protocol::from_ip_number(key.proto).unwrap_or(Protocol::Tcp);
        let (lo, hi) = (
            addr(&key.lo_addr, key.family),
            addr(&key.hi_addr, key.family),
        );
        let ports = protocol.has_ports();
        let (src, sport, dst, dport) = if init == DIR_LO_TO_HI {
            (lo, key.lo_port, hi, key.hi_port)
        } else {
            (hi, key.hi_port, lo, key.lo_port)
        };
        let i = init as usize;
        let packets = Directional {
            sent: total.packets[i],
            received: total.packets[i ^ 1],
        };
        let bytes = Directional {
            sent: total.bytes[i],
            received: total.bytes[i ^ 1],
        };
        let state = derive_state(protocol, e.flags, init, packets);
        FlowRecord {
            protocol,
            src: Endpoint::bare(src, ports.then_some(sport)),
            dst: Endpoint::bare(dst, ports.then_some(dport)),
            state: Some(state),
            first_seen: Some(self.clock.timestamp(e.first_seen_ns)),
            last_seen: Some(self.clock.timestamp(e.last_seen_ns)),
            packets: Some(packets),
            bytes: Some(bytes),
            drops: None,
            unenforced: None,
            node: self.node.clone(),
            counted: true,
            connections: None,
        }
    }
}

/// [`FlowUpdate::opened`]: for TCP, whether the initiator's SYN was seen.
fn opened(proto: u8, flags: u64, init: u8) -> bool {
    if Protocol::from_ip_number(proto) != Some(Protocol::Tcp) {
        return true;
    }
    let v = FlowValue {
        flags,
        ..FlowValue::default()
    };
    v.tcp_flags(init) & tcp_flags::SYN != 0
}

/// The direction index of the initiator; for flows picked up mid-stream (TCP without SYN)
/// the side with the higher port (the ephemeral one) is taken as the initiator.
fn init_dir(key: &FlowKey, initiator: u8) -> u8 {
    match initiator {
        DIR_LO_TO_HI | DIR_HI_TO_LO => initiator,
        _ if key.lo_port > key.hi_port => DIR_LO_TO_HI,
        _ if key.hi_port > key.lo_port => DIR_HI_TO_LO,
        _ => DIR_LO_TO_HI,
    }
}

fn addr(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// The state of a flow from its flag word, the initiator's direction and its packets.
///
/// TCP: SYN answered by RST (no SYN-ACK) or an ICMP unreachable without answer → `refused`;
/// any RST → `reset`; any FIN → `closed`; a SYN-ACK or traffic both ways → `established`;
/// otherwise `attempted`. Other protocols: ICMP unreachable → `refused`, an answer →
/// `active`, none → `attempted`.
pub fn derive_state(protocol: Protocol, flags: u64, init: u8, packets: Directional) -> FlowState {
    let v = FlowValue {
        flags,
        ..FlowValue::default()
    };
    let fi = v.tcp_flags(init);
    let fr = v.tcp_flags(init ^ 1);
    let unreach = v.events() & EVENT_ICMP_UNREACH != 0;
    if protocol != Protocol::Tcp {
        return if unreach && packets.received == 0 {
            FlowState::Refused
        } else if packets.received > 0 {
            FlowState::Active
        } else {
            FlowState::Attempted
        };
    }
    let syn_ack = fr & tcp_flags::SYN != 0 && fr & tcp_flags::ACK != 0;
    if (fr & tcp_flags::RST != 0 && !syn_ack && fi & tcp_flags::SYN != 0)
        || (unreach && packets.received == 0)
    {
        return FlowState::Refused;
    }
    if (fi | fr) & tcp_flags::RST != 0 {
        return FlowState::Reset;
    }
    if (fi | fr) & tcp_flags::FIN != 0 {
        return FlowState::Closed;
    }
    if syn_ack || packets.received > 0 {
        return FlowState::Established;
    }
    FlowState::Attempted
}

#[cfg(test)]
mod tests {
    use netpol_observe_ebpf::{EVENT_NEW, tcp_flag_bits};

    use super::*;

    fn key(proto: u8) -> FlowKey {
        let mut k = FlowKey {
            proto,
            family: FAMILY_V4,
            lo_port: 40000,
            hi_port: 80,
            ..FlowKey::default()
        };
        k.lo_addr[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        k.hi_addr[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        k
    }

    fn value(first: u64, last: u64, p: [u64; 2], flags: u64) -> FlowValue {
        FlowValue {
            packets: p,
            bytes: [p[0] * 100, p[1] * 100],
            first_seen_ns: first,
            last_seen_ns: last,
            flags,
            initiator: DIR_LO_TO_HI,
            _pad: [0; 7],
        }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn tcp_states() {
        let d = |s, r| Directional {
            sent: s,
            received: r,
        };
        let syn = tcp_flag_bits(0, tcp_flags::SYN);
        let synack = tcp_flag_bits(1, tcp_flags::SYN | tcp_flags::ACK);
        let rst_back = tcp_flag_bits(1, tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(
            derive_state(Protocol::Tcp, syn, 0, d(3, 0)),
            FlowState::Attempted
        );
        assert_eq!(
            derive_state(Protocol::Tcp, syn | rst_back, 0, d(1, 1)),
            FlowState::Refused
        );
        assert_eq!(
            derive_state(Protocol::Tcp, syn | synack, 0, d(2, 1)),
            FlowState::Established
        );
        let fin = tcp_flag_bits(0, tcp_flags::FIN | tcp_flags::ACK);
        assert_eq!(
            derive_state(Protocol::Tcp, syn | synack | fin, 0, d(4, 2)),
            FlowState::Closed
        );
        assert_eq!(
            derive_state(Protocol::Tcp, syn | synack | rst_back, 0, d(4, 2)),
            FlowState::Reset
        );
        let unreach = event_bits(EVENT_ICMP_UNREACH);
        assert_eq!(
            derive_state(Protocol::Udp, unreach, 0, d(1, 0)),
            FlowState::Refused
        );
        assert_eq!(
            derive_state(Protocol::Udp, 0, 0, d(1, 1)),
            FlowState::Active
        );
        assert_eq!(
            derive_state(Protocol::Icmp, 0, 0, d(1, 0)),
            FlowState::Attempted
        );
    }

    #[test]
    fn event_then_sweeps_give_deltas_and_expiry() {
        let mut t = FlowTable::new(Clock::with_offset_ns(0), Some("n1".into()));
        let k = key(17);
        t.on_event(&k, EVENT_NEW, 10, DIR_LO_TO_HI, DIR_LO_TO_HI);
        t.publish();
        let ups = t.take_updates();
        assert_eq!(ups.len(), 1);
        assert!(ups[0].new);
        let rec = &ups[0].record;
        assert_eq!(rec.src.ip.to_string(), "10.0.0.1");
        assert_eq!(rec.src.port, Some(40000));
        assert_eq!(rec.dst.port, Some(80));
        assert_eq!(rec.node.as_deref(), Some("n1"));

        let v = value(10, 20, [3, 2], 0);
        assert_eq!(t.on_sweep(&k, &v, 30, 100 * SEC), SweepAction::Keep);
        let seen = HashMap::from([(k, 10)]);
        t.finish_sweep(&seen, &[], 25, 30, 100 * SEC, 1000 * SEC);
        let ups = t.take_updates();
        assert_eq!(ups.len(), 1);
        assert_eq!(
            ups[0].delta_packets,
            Directional {
                sent: 3,
                received: 2
            }
        );
        assert_eq!(ups[0].record.state, Some(FlowState::Active));

        let v = value(10, 40, [5, 2], 0);
        assert_eq!(
            t.on_sweep(&k, &v, 200 * SEC, 100 * SEC),
            SweepAction::Expire
        );
        t.finish_sweep(&seen, &[k], 150 * SEC, 200 * SEC, 100 * SEC, 1000 * SEC);
        let ups = t.take_updates();
        assert_eq!(ups.len(), 1);
        assert!(ups[0].ended);
        assert_eq!(
            ups[0].delta_packets,
            Directional {
                sent: 2,
                received: 0
            }
        );
        assert_eq!(t.evictions(), 0);
        // Nothing further to publish for an ended flow.
        t.finish_sweep(
            &HashMap::new(),
            &[],
            300 * SEC,
            300 * SEC,
            100 * SEC,
            1000 * SEC,
        );
        assert!(t.take_updates().is_empty());
        assert_eq!(t.snapshot().len(), 1);
        assert_eq!(
            t.snapshot()[0].packets,
            Some(Directional {
                sent: 5,
                received: 2
            })
        );
    }

    /// `opened`: a TCP flow whose initiator's SYN the datapath saw (merged at the sweep), not
    /// one picked up mid-stream; other protocols always.
    #[test]
    fn opened_means_the_syn_was_seen() {
        let mut t = FlowTable::new(Clock::with_offset_ns(0), None);
        let (k, mid) = (key(6), {
            let mut k = key(6);
            k.lo_port = 40001;
            k
        });
        let syn = tcp_flag_bits(DIR_LO_TO_HI, tcp_flags::SYN);
        let ack = tcp_flag_bits(DIR_LO_TO_HI, tcp_flags::ACK) | tcp_flag_bits(1, tcp_flags::ACK);
        t.on_sweep(&k, &value(10, 20, [2, 1], syn | ack), 30, 100 * SEC);
        t.on_sweep(&mid, &value(10, 20, [2, 1], ack), 30, 100 * SEC);
        let udp = key(17);
        t.on_sweep(&udp, &value(10, 20, [1, 1], 0), 30, 100 * SEC);
        t.publish();
        let mut seen: Vec<(u8, u16, bool)> = t
            .take_updates()
            .iter()
            .map(|u| {
                let p = u.record.protocol.ip_number();
                (p, u.record.src.port.unwrap_or(0), u.opened)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [(6, 40000, true), (6, 40001, false), (17, 40000, true)]
        );
    }

    #[test]
    fn eviction_is_counted_and_counts_are_kept() {
        let mut t = FlowTable::new(Clock::with_offset_ns(0), None);
        let k = key(6);
        t.on_sweep(&k, &value(10, 20, [4, 4], 0), 30, 100 * SEC);
        // Gone from the map without us deleting it.
        t.finish_sweep(&HashMap::new(), &[], 40, 50, 100 * SEC, 1000 * SEC);
        assert_eq!(t.evictions(), 1);
        // The flow comes back as a new incarnation.
        t.on_event(&k, EVENT_NEW, 60, INITIATOR_UNKNOWN, DIR_HI_TO_LO);
        t.on_sweep(&k, &value(60, 70, [1, 1], 0), 80, 100 * SEC);
        assert_eq!(t.evictions(), 1);
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            snap[0].packets,
            Some(Directional {
                sent: 5,
                received: 5
            })
        );
        // Re-created while we believed the old incarnation alive: also an eviction.
        t.on_sweep(&k, &value(90, 95, [1, 0], 0), 100, 100 * SEC);
        assert_eq!(t.evictions(), 2);
        assert_eq!(
            t.snapshot()[0].packets,
            Some(Directional {
                sent: 6,
                received: 5
            })
        );
    }

    #[test]
    fn flows_created_during_a_sweep_are_not_evictions() {
        let mut t = FlowTable::new(Clock::with_offset_ns(0), None);
        let k = key(17);
        t.on_event(&k, EVENT_NEW, 50, DIR_LO_TO_HI, DIR_LO_TO_HI);
        t.finish_sweep(&HashMap::new(), &[], 40, 60, 100 * SEC, 1000 * SEC);
        assert_eq!(t.evictions(), 0);
    }

    #[test]
    fn icmp_has_no_ports_and_unknown_initiator_uses_ephemeral_port() {
        let mut t = FlowTable::new(Clock::with_offset_ns(0), None);
        let k = key(1);
        t.on_event(&k, EVENT_NEW, 5, DIR_HI_TO_LO, DIR_HI_TO_LO);
        let r = &t.snapshot()[0];
        assert_eq!(r.protocol, Protocol::Icmp);
        assert_eq!(r.src.ip.to_string(), "10.0.0.2");
        assert_eq!(r.src.port, None);
        let k = key(6);
        t.on_event(&k, EVENT_NEW, 6, INITIATOR_UNKNOWN, DIR_HI_TO_LO);
        let r = t
            .snapshot()
            .into_iter()
            .find(|r| r.protocol == Protocol::Tcp)
            .unwrap();
        assert_eq!(r.src.port, Some(40000));
        assert_eq!(r.dst.port, Some(80));
    }

    #[test]
    fn a_listening_socket_orients_a_flow_picked_up_mid_stream() {
        // 10.0.0.1:40000 (lo) listens; 10.0.0.2:80 (hi) is its client, whatever the ports say.
        let mut t = FlowTable::new(Clock::with_offset_ns(0), None);
        let mut sockets = Sockets::default();
        sockets.add_tcp_listener(([10, 0, 0, 1].into(), 40000));
        t.set_sockets(sockets);
        let k = key(6);
        t.on_event(&k, EVENT_NEW, 6, INITIATOR_UNKNOWN, DIR_LO_TO_HI);
        t.on_sweep(&k, &value(6, 9, [3, 2], 0), 10, 100 * SEC);
        let r = &t.snapshot()[0];
        assert_eq!(
            (r.src.ip.to_string(), r.src.port),
            ("10.0.0.2".into(), Some(80))
        );
        assert_eq!(
            (r.dst.ip.to_string(), r.dst.port),
            ("10.0.0.1".into(), Some(40000))
        );
        // Counters follow the orientation: the client sent what went hi → lo.
        assert_eq!(
            r.packets,
            Some(Directional {
                sent: 2,
                received: 3
            })
        );
        assert_eq!(r.state, Some(FlowState::Established));
    }
}
