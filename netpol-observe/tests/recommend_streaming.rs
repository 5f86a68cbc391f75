//! The recommender's input as a stream (`recommend::aggregate`): records folded as they are
//! read give the policies of the records held, byte for byte — many copies of the same
//! connections as the deduplicated input, a file through the CLI as the same records in
//! memory, denied connections whose evidence comes after their other records (a second pass).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use netpol_observe_core::{
    flow::{Drops, FlowRecord, FlowState, jsonl},
    recommend::{RecommendConfig, Recommender, RecordedFlows, render_yaml},
};
use recommend_support::*;

const COPIES: u16 = 40;

/// Every flow of `s` `COPIES` times, as a busy cluster records them: another source port and
/// later times each.
fn copies(flows: &[FlowRecord]) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    for j in 0..COPIES {
        for f in flows {
            let mut c = f.clone();
            c.src.port = Some(20000 + j);
            let shift = jiff::SignedDuration::from_secs(i64::from(j));
            c.first_seen = c.first_seen.map(|t| t.checked_add(shift).unwrap());
            c.last_seen = c.last_seen.map(|t| t.checked_add(shift).unwrap());
            out.push(c);
        }
    }
    out
}

/// The same flows deduplicated: one record each, standing for its copies.
fn deduplicated(flows: &[FlowRecord]) -> Vec<FlowRecord> {
    flows
        .iter()
        .map(|f| {
            let mut c = f.clone();
            let shift = jiff::SignedDuration::from_secs(i64::from(COPIES - 1));
            c.last_seen = c.last_seen.map(|t| t.checked_add(shift).unwrap());
            c.connections = Some(u64::from(COPIES));
            c
        })
        .collect()
}

#[test]
fn many_copies_stream_to_the_policies_of_the_deduplicated_input() {
    let s = three_tier();
    let inventory = s.cluster.inventory();
    let recommender = Recommender::new(&inventory, &s.subnets, RecommendConfig::default());
    let many = copies(&s.flows);
    let streamed = recommender.aggregate_recorded(&many.clone().into());
    assert_eq!(streamed.records(), many.len());
    assert_eq!(
        streamed.groups(),
        s.flows.len(),
        "one group per distinct flow"
    );
    let from_stream = recommender.recommend_aggregate(&streamed);
    let from_dedup = recommender.recommend(&deduplicated(&s.flows));
    let yaml = render_yaml(&from_stream.policies).unwrap();
    assert_eq!(yaml, render_yaml(&from_dedup.policies).unwrap());
    // A workload with one observed flow counts its copies.
    assert!(
        yaml.contains(&format!("netpol-observe.io/flows: \"{COPIES}\"")),
        "the counts are the copies': {yaml}"
    );
    // And the copies held give the same as the copies streamed.
    assert_same(&recommender.recommend(&many), &from_stream);
}

fn cli(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn jsonl_of(flows: &[FlowRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in flows {
        jsonl::write_line(&mut out, f).unwrap();
    }
    out
}

/// `recommend --flows FILE` (streamed) writes the YAML of the same records held in memory; so
/// does `--flows -`; a corrupt line is reported with its line number and the others are used.
#[test]
fn a_file_streamed_gives_the_yaml_of_the_records_held() {
    let s = three_tier();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, s.cluster.yaml()).unwrap();
    let subnets = dir.path().join("subnets.yaml");
    std::fs::write(&subnets, "db-subnet: 10.0.2.0/24\n").unwrap();
    let many = copies(&s.flows);
    let file = dir.path().join("flows.jsonl");
    std::fs::write(&file, jsonl_of(&many)).unwrap();
    let inventory = s.cluster.inventory();
    let held =
        Recommender::new(&inventory, &s.subnets, RecommendConfig::default()).recommend(&many);
    let want = render_yaml(&held.policies).unwrap();
    let (inv, subnets, file) = (
        inv.to_str().unwrap(),
        subnets.to_str().unwrap(),
        file.to_str().unwrap(),
    );
    let args = [
        "recommend",
        "--inventory",
        inv,
        "--subnets",
        subnets,
        "--flows",
    ];

    let out = cli(&[&args[..], &[file]].concat(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    let out = cli(&[&args[..], &["-"]].concat(), Some(&jsonl_of(&many)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    // A corrupt line in the middle: reported with its number, exit code 2, the rest used.
    let mut text = jsonl_of(&many[..5]);
    text.extend_from_slice(b"{\"protocol\":\"TCP\",\"src\":\n");
    text.extend_from_slice(&jsonl_of(&many[5..]));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, text).unwrap();
    let out = cli(&[&args[..], &[bad.to_str().unwrap()]].concat(), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:6: invalid flow record", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: 1 flow line(s) could not be read"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

/// A connection the kernel dropped, whose drops (the server's record) come after the client's
/// records in the file: the stream reads the file again and gives the policies, notes and
/// denied list of the records held.
#[test]
fn evidence_after_the_records_it_concerns_is_found_by_another_pass() {
    let s = three_tier();
    let inventory = s.cluster.inventory();
    let mut flows = copies(&s.flows);
    // The first flow's client records were attempts; the server's node saw the drops.
    let first = s.flows[0].clone();
    let mut attempts = 0;
    for f in flows
        .iter_mut()
        .filter(|f| f.src.ip == first.src.ip && f.dst == first.dst)
    {
        f.state = Some(FlowState::Attempted);
        attempts += 1;
    }
    assert!(attempts >= usize::from(COPIES));
    let mut server = flows[0].clone();
    server.counted = false;
    server.node = Some("node-b".to_owned());
    server.drops = Some(Drops {
        count: 3,
        reason: Some("NETFILTER_DROP".to_owned()),
        policy: Some("frontend/deny-all".to_owned()),
    });
    flows.push(server);
    let input: RecordedFlows = flows.into();
    let recommender = Recommender::new(&inventory, &s.subnets, RecommendConfig::default());
    let held = recommender.recommend_recorded(&input);
    assert_eq!(held.stats.denied, 1, "{:#?}", held.notes);
    let mut passes = 0;
    let streamed = recommender
        .aggregate(|agg| {
            passes += 1;
            for (i, f) in input.flows.iter().enumerate() {
                agg.push(f.clone(), input.verdict(i).cloned());
            }
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    assert_eq!(passes, 2);
    assert_same(&held, &recommender.recommend_aggregate(&streamed));
}
