//! A consistent CLI (issue 26, item 6): `-o/--output` is the format everywhere (as kubectl's),
//! a file or directory to write is `--write`, and each format parses into the typed records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command};

use netpol_observe_agent::agent::ObservedFlow;
use netpol_observe_core::policy::EvaluatedFlow;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shop")
}

fn bin(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

const FLOWS: &str = concat!(
    r#"{"protocol":"TCP","src":{"ip":"10.244.1.5","port":40000},"dst":{"ip":"10.96.0.20","port":80},"first_seen":"2026-05-04T10:00:00Z"}"#,
    "\n",
    r#"{"protocol":"TCP","src":{"ip":"10.244.2.3","port":40001},"dst":{"ip":"10.244.1.9","port":9000},"state":"attempted","first_seen":"2026-05-04T10:00:01Z"}"#,
    "\n",
);

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("flows.jsonl"), FLOWS).unwrap();
    d
}

/// `evaluate -o jsonl|json|table`, then `flows --file … -o jsonl|json|table` on evaluate's
/// output: the same two flows with the same verdicts in every format.
#[test]
fn evaluate_and_flows_take_o_as_the_format() {
    let d = setup();
    let inv = fixture().display().to_string();
    let eval = |o: &str| {
        let out = bin(
            &[
                "evaluate",
                "--inventory",
                &inv,
                "--flows",
                "flows.jsonl",
                "-o",
                o,
            ],
            d.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let lines: Vec<EvaluatedFlow> = eval("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let array: Vec<EvaluatedFlow> = serde_json::from_str(&eval("json")).unwrap();
    assert_eq!(lines, array);
    assert_eq!(
        lines.iter().map(|e| e.verdict.allowed).collect::<Vec<_>>(),
        [true, false]
    );
    let table = eval("table");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().nth(2).unwrap().contains("denied"), "{table}");

    std::fs::write(d.path().join("evaluated.jsonl"), eval("jsonl")).unwrap();
    let flows = |o: &str| {
        let out = bin(&["flows", "--file", "evaluated.jsonl", "-o", o], d.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let jsonl: Vec<ObservedFlow> = flows("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let json: Vec<ObservedFlow> = serde_json::from_str(&flows("json")).unwrap();
    assert_eq!(jsonl, json);
    assert_eq!(
        json.iter()
            .map(|f| f.verdict.as_ref().map(|v| v.allowed))
            .collect::<Vec<_>>(),
        [Some(true), Some(false)]
    );
    assert_eq!(flows("table"), table, "flows and evaluate print one table");
    // A format that is not one is refused, naming the choices.
    let out = bin(
        &["flows", "--file", "evaluated.jsonl", "-o", "yaml"],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("table, jsonl, json"), "{err}");
}

/// `baseline --write PATH` writes the file; without it the baseline goes to stdout; `-o` is a
/// format flag, not a path, and `baseline` has none.
#[test]
fn baseline_writes_with_write() {
    let d = setup();
    let inv = fixture().display().to_string();
    let out = bin(
        &[
            "baseline",
            "--flows",
            "flows.jsonl",
            "--inventory",
            &inv,
            "--write",
            "b.jsonl",
        ],
        d.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(d.path().join("b.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 2, "{written}");
    let out = bin(
        &["baseline", "--flows", "flows.jsonl", "--inventory", &inv],
        d.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), written);
    let out = bin(
        &["baseline", "--flows", "flows.jsonl", "-o", "b2.jsonl"],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.path().join("b2.jsonl").exists());
}
