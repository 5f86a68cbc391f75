//! The fuzzing tier, on stable Rust: a mutational fuzzer (byte flips, interesting bytes and
//! tokens, insertions, deletions, duplications, splices between corpus entries; no coverage
//! guidance) over every parser of untrusted input — flow lines, agents' and Prometheus'
//! answers, inventory and policy YAML, subnets, the agent's configuration file, lab scenarios
//! (parsed and resolved), DNS queries to the lab's kube-dns, DNS answers the datapath captures
//! (UDP, and TCP with its length), and the agent's HTTP API (paths
//! and query strings through the real router). Seeds are in `tests/fuzz-corpus/<target>/`.
//!
//! Each input must be handled without a panic and within 5 s; a failing input is written to
//! `target/fuzz-failures/<target>-<n>` and the test fails naming it. The default run spends
//! 2 s per target (part of `cargo xtask test`); `cargo xtask fuzz --seconds N` spends N per
//! target (`NETPOL_OBSERVE_FUZZ_SECONDS`), with `NETPOL_OBSERVE_FUZZ_SEED` to vary the run
//! (the seed is printed, so a run can be repeated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use netpol_observe_agent::{
    agent::{AgentConfig, AgentState, dns::parse_answer},
    http::{auth::ApiGuard, router},
};
use netpol_observe_core::{
    attribution::Subnets, flow::jsonl, inventory::Inventory, recommend::sources,
};
use netpol_observe_lab::{dns, model::LabModel, scenario};

/// The slowest any single input may be.
const SLOW: Duration = Duration::from_secs(5);

/// Tokens that matter to YAML, JSON, CIDRs, selectors, URLs and DNS names.
const TOKENS: &[&str] = &[
    "apiVersion: v1\n",
    "kind: Pod\n",
    "kind: NetworkPolicy\n",
    "kind: List\n",
    "---\n",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    ": ",
    "- ",
    "\n  ",
    "&a ",
    "*a",
    "!!binary ",
    "<<: *a\n",
    "\u{feff}",
    "\\u0000",
    "\u{0}",
    "999999999999999999999",
    "-1",
    "65536",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/33",
    "fe80::1%eth0",
    "matchExpressions",
    "operator: In",
    "values: []",
    "podSelector: {}",
    "namespaceSelector",
    "ipBlock",
    "except",
    "endPort",
    "%",
    "%00",
    "%ff",
    "&",
    "=",
    "?",
    "/..",
    "limit=",
    "since=",
    "\u{fffd}",
    "ä",
    "\r\n",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [
                    0u8, 0xff, 0x7f, 0x80, b'{', b'[', b'"', b'\n', b':', b'-', b' ',
                ][rng.below(11)];
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, t.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 if !data.is_empty() => {
                // Duplicate a run (deep nesting, long lists).
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(32)).min(data.len());
                let run: Vec<u8> = data[start..end].to_vec();
                for _ in 0..1 + rng.below(50) {
                    data.splice(at..at, run.iter().copied());
                }
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let start = rng.below(other.len());
                let end = (start + rng.below(256)).min(other.len());
                data.splice(at..at, other[start..end].iter().copied());
            }
            6 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            _ => {
                let end = (at + rng.below(16)).min(data.len());
                let digits = rng.next().to_string();
                data.splice(at..end, digits.bytes());
            }
        }
    }
    data.truncate(1 << 20);
    data
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut inputs: Vec<Vec<u8>> = entries.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Line-oriented seeds also give one seed per line.
    if target == "http" {
        inputs = inputs
            .iter()
            .flat_map(|f| {
                f.split(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .collect();
    }
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("NETPOL_OBSERVE_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    )
}

fn seed() -> u64 {
    std::env::var("NETPOL_OBSERVE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e70_6f66_757a_7a31)
}

fn keep(target: &str, input: &[u8], why: &str) -> ! {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{:016x}", seed_of(input)));
    std::fs::write(&path, input).unwrap();
    panic!("{target}: {why}; input kept in {}", path.display());
}

fn seed_of(input: &[u8]) -> u64 {
    input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs `f` on the seeds, then on mutations until the budget is spent.
fn fuzz(target: &str, f: impl Fn(&[u8])) {
    let corpus = corpus(target);
    let mut rng = Rng(seed() ^ seed_of(target.as_bytes()) | 1);
    let start = Instant::now();
    let mut runs = 0u64;
    let mut inputs = corpus.clone().into_iter();
    loop {
        let input = match inputs.next() {
            Some(seed) => seed,
            None if start.elapsed() < budget() => mutate(&mut rng, &corpus),
            None => break,
        };
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&input)));
        if outcome.is_err() {
            keep(target, &input, "panicked");
        }
        if t.elapsed() > SLOW {
            keep(target, &input, &format!("took {:?}", t.elapsed()));
        }
        runs += 1;
    }
    eprintln!(
        "fuzz {target}: {runs} inputs in {:?} (seed {})",
        start.elapsed(),
        seed()
    );
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

#[test]
fn fuzz_flow_lines() {
    fuzz("flows", |input| {
        let _ = jsonl::read_lines(Path::new("fuzz.jsonl"), input);
        let _ = sources::parse_agent_flows(&text(input), "fuzz");
    });
}

#[test]
fn fuzz_prometheus_answers() {
    let inventory = Inventory::default();
    let subnets = Subnets::default();
    fuzz("prometheus", |input| {
        let _ = sources::prometheus::parse_prometheus(
            &text(input),
            "fuzz",
            &inventory,
            &subnets,
            jiff::SignedDuration::from_hours(1),
        );
    });
}

#[test]
fn fuzz_inventory_and_policies() {
    fuzz("inventory", |input| {
        let _ = Inventory::from_yaml_str(&text(input), "fuzz.yaml");
    });
}

#[test]
fn fuzz_subnets() {
    fuzz("subnets", |input| {
        let _ = Subnets::from_yaml_str(&text(input), Path::new("fuzz.yaml"));
    });
}

#[test]
fn fuzz_agent_config() {
    fuzz("config", |input| {
        if let Ok(c) = AgentConfig::from_yaml_str(&text(input), Path::new("fuzz.yaml")) {
            let _ = c.validate();
        }
    });
}

#[test]
fn fuzz_lab_scenarios() {
    fuzz("scenario", |input| {
        let path = Path::new("fuzz.yaml");
        let text = text(input);
        if let Ok(s) = scenario::parse(path, &text) {
            let _ = LabModel::build(path, &text, &s);
        }
    });
}

#[test]
fn fuzz_dns_queries() {
    let path = Path::new("shop.yaml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/scenario/shop.yaml"),
    )
    .unwrap();
    let model = LabModel::build(path, &text, &scenario::parse(path, &text).unwrap()).unwrap();
    let zone = dns::zone(&model);
    fuzz("dns", |input| {
        let _ = dns::answer(input, &zone);
    });
}

#[test]
fn fuzz_dns_answers() {
    fuzz("dns-answers", |input| {
        let n = input.len() as u32;
        let _ = parse_answer(input, false, n);
        let _ = parse_answer(input, true, n);
        // As if the capture had cut a longer payload.
        let _ = parse_answer(input, false, n.saturating_add(100));
        let _ = parse_answer(input, true, n.saturating_add(100));
    });
}

#[test]
fn fuzz_http_api_paths_and_queries() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(AgentState::new(AgentConfig::default()));
    let app = router(state, Arc::new(ApiGuard::open()));
    fuzz("http", |input| {
        // Whatever a client can put on the request line.
        let uri = text(input);
        let Ok(request) = http::Request::builder()
            .uri(uri.as_str())
            .body(axum::body::Body::empty())
        else {
            return;
        };
        runtime.block_on(async {
            use tower::ServiceExt;
            let response = app.clone().oneshot(request).await.unwrap();
            let _ = axum::body::to_bytes(response.into_body(), 1 << 26).await;
        });
    });
}
