//! Where `recommend` gets flows (pure parts; the HTTP calls are in the CLI): flow files and
//! agents' `/api/v1/flows` (JSON lines with the verdict under the policies in force, merged
//! and de-duplicated) and Prometheus' `netpol_observe_flows_total` series with their
//! `verdict`, `netpol_observe_drops_total` and `netpol_observe_unenforced_flows_total`
//! (turned into workload-level flows).

use std::{collections::HashMap, net::IpAddr, path::Path};

use jiff::Timestamp;
use serde::Deserialize;

use super::{RecordedFlows, RecordedVerdict};
use crate::{
    flow::{
        FlowRecord, Protocol,
        jsonl::{self, FlowLineError, FlowLineWith},
    },
    policy::SideResult,
};

pub mod prometheus;

/// Errors of the flow sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A Prometheus answer that is not a successful instant-vector query result.
    #[error("{origin}: not a Prometheus instant-vector answer: {problem}")]
    Prometheus {
        /// Where the answer came from (URL).
        origin: String,
        /// What is wrong.
        problem: String,
    },
}

/// The verdict under the policies in force a flow line carries (`verdict`: the agent's
/// `/api/v1/flows`, `flows -o jsonl`, `evaluate`), if any: an object with `allowed` and,
/// optionally, the `ingress` and `egress` sides naming the isolating `policies` (the form of
/// [`crate::policy::Verdict`]). `staged_verdict` is not one.
pub(crate) fn recorded_verdict(line: &str) -> Result<Option<RecordedVerdict>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        verdict: Option<Recorded>,
    }
    #[derive(Deserialize)]
    struct Recorded {
        allowed: bool,
        #[serde(default)]
        ingress: Option<Side>,
        #[serde(default)]
        egress: Option<Side>,
    }
    #[derive(Deserialize)]
    struct Side {
        result: SideResult,
        #[serde(default)]
        policies: Vec<String>,
    }
    // A line without the word (nor an escape that could spell it) has no verdict: most lines
    // are read once, not twice.
    if !line.contains("verdict") && !line.contains('\\') {
        return Ok(None);
    }
    let Some(v) = serde_json::from_str::<Line>(line)?.verdict else {
        return Ok(None);
    };
    if v.allowed {
        return Ok(Some(RecordedVerdict::Allowed));
    }
    let denied = |s: Option<Side>| {
        s.filter(|s| s.result == SideResult::Denied)
            .map(|s| s.policies)
    };
    Ok(Some(RecordedVerdict::Denied(super::judge::denial_of(
        denied(v.egress),
        denied(v.ingress),
    ))))
}

/// The records of [`jsonl::read_lines_with`] / [`jsonl::read_file_with`] read with
/// [`recorded_verdict`], and the bad lines.
pub(crate) fn recorded_lines(
    lines: Vec<FlowLineWith<Option<RecordedVerdict>>>,
) -> (RecordedFlows, Vec<FlowLineError>) {
    let mut flows = RecordedFlows::default();
    let mut errors = Vec::new();
    for (_, line) in lines {
        match line {
            Ok((f, v)) => flows.push(f, v),
            Err(e) => errors.push(e),
        }
    }
    (flows, errors)
}

/// Reads a flow file (`-`: stdin) with the verdicts its lines carry.
pub fn read_flow_file(path: &Path) -> (RecordedFlows, Vec<FlowLineError>) {
    recorded_lines(jsonl::read_file_with(path, "verdict", recorded_verdict))
}

/// Reads an agent's `/api/v1/flows` body (JSON lines) with the verdict of each line. Bad lines
/// are returned as errors naming `origin` and the line; good ones are kept.
pub fn parse_agent_answer(body: &str, origin: &str) -> (RecordedFlows, Vec<FlowLineError>) {
    recorded_lines(jsonl::read_lines_with(
        Path::new(origin),
        body.as_bytes(),
        "verdict",
        recorded_verdict,
    ))
}

/// [`parse_agent_answer`] without the verdicts.
pub fn parse_agent_flows(body: &str, origin: &str) -> (Vec<FlowRecord>, Vec<FlowLineError>) {
    let (flows, errors) = parse_agent_answer(body, origin);
    (flows.flows, errors)
}

/// Merges the flows of several agents, dropping duplicates (same protocol, addresses, ports
/// and `first_seen`: an agent asked twice, or a flow between two nodes both agents stamped
/// alike). The first copy wins, except that a counted copy replaces one marked
/// `counted: false`, so the flow keeps its evidence count. Copies that differ (each agent
/// stamps the flow with its own clock) are all kept: the records of one flow from two nodes
/// differ in `counted`, and only the counted one counts as evidence.
pub fn merge_flows(sources: impl IntoIterator<Item = Vec<FlowRecord>>) -> Vec<FlowRecord> {
    merge_recorded(sources.into_iter().map(RecordedFlows::from)).flows
}

/// [`merge_flows`], each kept record with its recorded verdict.
pub fn merge_recorded(sources: impl IntoIterator<Item = RecordedFlows>) -> RecordedFlows {
    type Key = (
        Protocol,
        IpAddr,
        Option<u16>,
        IpAddr,
        Option<u16>,
        Option<Timestamp>,
    );
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut out = RecordedFlows::default();
    for list in sources {
        let mut verdicts = list.verdicts.into_iter();
        for f in list.flows {
            let v = verdicts.next().flatten();
            let key = (
                f.protocol,
                f.src.ip,
                f.src.port,
                f.dst.ip,
                f.dst.port,
                f.first_seen,
            );
            match seen.get(&key) {
                Some(&i) => {
                    if let Some(kept) = out.flows.get_mut(i)
                        && f.counted
                        && !kept.counted
                    {
                        *kept = f;
                        if v.is_some() || !out.verdicts.is_empty() {
                            out.verdicts.resize(out.flows.len(), None);
                            out.verdicts[i] = v;
                        }
                    }
                }
                None => {
                    seen.insert(key, out.flows.len());
                    out.push(f, v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of one flow from two agents: the counted one is kept, whichever agent came
    /// first; copies stamped differently are all kept (only the counted one is evidence).
    #[test]
    fn merging_keeps_the_counted_copy() {
        let t: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
        let flow = |node: &str, counted: bool, first_seen: Timestamp| {
            let mut f = FlowRecord::new(
                Protocol::Tcp,
                "10.1.0.10".parse().unwrap(),
                "10.2.0.30".parse().unwrap(),
                Some(5432),
            );
            f.src.port = Some(40001);
            f.first_seen = Some(first_seen);
            f.node = Some(node.to_owned());
            f.counted = counted;
            f
        };
        let (a, b) = (flow("node-a", true, t), flow("node-b", false, t));
        for lists in [
            [vec![b.clone()], vec![a.clone()]],
            [vec![a.clone()], vec![b]],
        ] {
            assert_eq!(merge_flows(lists), vec![a.clone()]);
        }
        let later = flow(
            "node-b",
            false,
            t.checked_add(jiff::SignedDuration::from_millis(1)).unwrap(),
        );
        assert_eq!(
            merge_flows([vec![later.clone()], vec![a.clone()]]),
            vec![later, a]
        );
    }
}
