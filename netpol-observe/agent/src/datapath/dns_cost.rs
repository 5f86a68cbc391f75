//! The cost of the DNS-answer capture per program run (used by `cargo xtask bench datapath
//! -- --dns-cost`): the egress program run by the kernel (`BPF_PROG_TEST_RUN`, `repeat` runs
//! per call) on a DNS answer and on the same packet from another port, with the capture on
//! and off (`CAPTURE_DNS`), and optionally through another build's object (the before of a
//! change), interleaved round by round; the kernel reports the mean ns per run of each call.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netpol_observe_ebpf::{GLOBAL_CAPTURE_DNS, MAP_DNS_EVENTS, MAP_FLOW_CACHE, PROG_TC_EGRESS};

use super::{DatapathError, EBPF_OBJECT, flow_cache_entries};

/// One measured arm: its label and the mean ns per run of each round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostArm {
    /// e.g. `dns answer, capture on`.
    pub label: String,
    /// ns per run, one value per round.
    pub ns: Vec<f64>,
}

/// Ethernet + IPv4 (no options) + UDP from `sport` to 41000 carrying `payload`.
fn udp_packet(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(42 + payload.len());
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let ip_len = (20 + 8 + payload.len()) as u16;
    p.extend_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&[10, 96, 0, 10, 10, 244, 0, 5]);
    let udp_len = (8 + payload.len()) as u16;
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&41000u16.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A DNS answer: `api.example.com` A 203.0.113.10 and 203.0.113.11 (a usual small answer).
fn dns_payload() -> Result<Vec<u8>, DatapathError> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    let name = Name::from_ascii("api.example.com.")
        .map_err(|e| DatapathError::InvalidConfig(format!("the DNS test answer: {e}")))?;
    let mut m = Message::new();
    m.set_id(1)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(name.clone(), RecordType::A));
    for last in [10, 11] {
        m.add_answer(Record::from_rdata(
            name.clone(),
            30,
            RData::A(A::new(203, 0, 113, last)),
        ));
    }
    m.to_vec()
        .map_err(|e| DatapathError::InvalidConfig(format!("the DNS test answer: {e}")))
}

/// A loaded object with its egress program.
struct Loaded {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
}

impl Loaded {
    fn new(object: &[u8], capture: Option<u8>) -> Result<Loaded, DatapathError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOW_CACHE, flow_cache_entries()?);
        if let Some(c) = &capture {
            // Room for every answer of a round: the buffer never fills while measured.
            loader
                .map_max_entries(MAP_DNS_EVENTS, 1 << 24)
                .override_global(GLOBAL_CAPTURE_DNS, c, true);
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DatapathError::load("the eBPF object", e))?;
        let ring = match capture {
            Some(_) => Some(super::take_map(&mut ebpf, MAP_DNS_EVENTS)?),
            None => None,
        };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_EGRESS)
            .ok_or_else(|| DatapathError::Missing(format!("program {PROG_TC_EGRESS}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                DatapathError::load(format!("program {PROG_TC_EGRESS}"), e)
            })?;
        prog.load()
            .map_err(|e| DatapathError::load(format!("program {PROG_TC_EGRESS}"), e))?;
        Ok(Loaded { ebpf, ring })
    }

    /// Mean ns per run of `repeat` runs on `packet`; then empties the DNS ring buffer.
    fn run(&mut self, packet: &[u8], repeat: u32) -> Result<f64, DatapathError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_TC_EGRESS)
            .ok_or_else(|| DatapathError::Missing(format!("program {PROG_TC_EGRESS}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                DatapathError::load(format!("program {PROG_TC_EGRESS}"), e)
            })?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| {
                DatapathError::load(format!("program {PROG_TC_EGRESS}: BPF_PROG_TEST_RUN"), e)
            })?;
        if let Some(ring) = &mut self.ring {
            while ring.next().is_some() {}
        }
        Ok(r.duration.as_nanos() as f64)
    }
}

/// Runs the arms `rounds` times, interleaved, `repeat` program runs per call; `baseline`: the
/// path of another build's eBPF object, measured as well.
pub fn dns_capture_cost(
    rounds: usize,
    repeat: u32,
    baseline: Option<&Path>,
) -> Result<Vec<CostArm>, DatapathError> {
    let dns = udp_packet(53, &dns_payload()?);
    let other = udp_packet(5353, &dns_payload()?);
    let mut on = Loaded::new(EBPF_OBJECT, Some(1))?;
    let mut off = Loaded::new(EBPF_OBJECT, Some(0))?;
    let base_bytes = match baseline {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            DatapathError::InvalidConfig(format!("baseline object {}: {e}", p.display()))
        })?),
        None => None,
    };
    let mut base = match &base_bytes {
        Some(b) => Some(Loaded::new(b, None)?),
        None => None,
    };
    let mut arms = vec![
        CostArm {
            label: "DNS answer (port 53), capture on".into(),
            ns: Vec::new(),
        },
        CostArm {
            label: "DNS answer (port 53), capture off".into(),
            ns: Vec::new(),
        },
        CostArm {
            label: "other UDP (port 5353), capture on".into(),
            ns: Vec::new(),
        },
        CostArm {
            label: "other UDP (port 5353), capture off".into(),
            ns: Vec::new(),
        },
    ];
    if base.is_some() {
        arms.push(CostArm {
            label: "DNS answer (port 53), baseline object".into(),
            ns: Vec::new(),
        });
        arms.push(CostArm {
            label: "other UDP (port 5353), baseline object".into(),
            ns: Vec::new(),
        });
    }
    // A first run of each packet creates its flow: measured are established flows' packets.
    for l in [&mut on, &mut off] {
        l.run(&dns, 1)?;
        l.run(&other, 1)?;
    }
    if let Some(b) = &mut base {
        b.run(&dns, 1)?;
        b.run(&other, 1)?;
    }
    for round in 0..rounds {
        // The order rotates from round to round.
        let n = arms.len();
        for k in 0..n {
            let i = (k + round) % n;
            let ns = match i {
                0 => on.run(&dns, repeat)?,
                1 => off.run(&dns, repeat)?,
                2 => on.run(&other, repeat)?,
                3 => off.run(&other, repeat)?,
                4 => base.as_mut().map_or(Ok(0.0), |b| b.run(&dns, repeat))?,
                _ => base.as_mut().map_or(Ok(0.0), |b| b.run(&other, repeat))?,
            };
            arms[i].ns.push(ns);
        }
    }
    Ok(arms)
}
