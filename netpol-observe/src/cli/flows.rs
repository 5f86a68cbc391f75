//! `netpol-observe flows`: attributed flows from running agents (`/api/v1/flows`) or from a
//! JSON-lines file, as a table or JSON lines, with filters.

use crate::report::Chain;
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;

use super::out::{OutputError, errln};
use crate::{
    agent::{FlowQuery, ObservedFlow},
    flow::{FlowRecord, jsonl, table},
    http::{
        FlowParams, TRUNCATED_HEADER,
        client::{self, BearerToken},
    },
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table for people.
    Table,
    /// One JSON line per flow (the flow record with its `verdict`).
    Jsonl,
    /// One JSON array of the flows (as `jsonl`'s lines).
    Json,
}

/// Arguments of `netpol-observe flows`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe flows --agent http://127.0.0.1:9965
  kubectl create token reader -n netpol-observe --audience netpol-observe --duration 10m > token
  netpol-observe flows --agent http://10.0.0.5:9965 http://10.0.0.6:9965 --token-file token --verdict denied
  netpol-observe flows --file flows.jsonl --workload web -o jsonl
  netpol-observe flows --file flows.jsonl --since 5m -n 20

Agents deployed in a cluster answer /api/v1 only to a bearer token of an identity bound to the
ClusterRole netpol-observe-reader: --token-file, else the pod's ServiceAccount token, else the
kubeconfig's token (deploy/README.md). An agent answers at most 100000 flows (the most recent);
a warning says when one held more.

A bad line of --file is reported on stderr (file:line) and the others are still printed; the
exit code is then 2.")]
pub struct Args {
    /// Base URL of a running agent (several: flows of every agent, in order).
    #[arg(long, num_args = 1.., value_name = "URL", required_unless_present = "file", conflicts_with = "file")]
    pub agent: Vec<String>,
    /// A JSON-lines file of flow records (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only flows with either peer in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only flows with either peer's workload (or pod, subnet, node) of this name.
    #[arg(long)]
    pub workload: Option<String>,
    /// Only flows with this verdict: allowed, denied, staged-allowed, staged-denied.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only flows seen at or after this time: RFC 3339, or a duration back from now (`5m`,
    /// `2h`, `1d`).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many flows (the most recent).
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<usize>,
    /// Bearer token for the agents (a file holding it) [default: the pod's ServiceAccount
    /// token, else the kubeconfig's].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "file"
    )]
    pub token_file: Option<PathBuf>,
    /// Output format (as kubectl's `-o`).
    #[arg(
        short = 'o',
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "table"
    )]
    pub output: Output,
}

impl Args {
    fn params(&self) -> anyhow::Result<FlowParams> {
        Ok(FlowParams {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            verdict: self.verdict.clone(),
            since: self.since.as_deref().map(since).transpose()?,
            limit: self.limit,
        })
    }
}

/// `--since`: an RFC 3339 time as is, or a duration (`5m`, `2h`, `1d`, `90s`) back from now.
fn since(text: &str) -> anyhow::Result<String> {
    if text.parse::<jiff::Timestamp>().is_ok() {
        return Ok(text.to_owned());
    }
    let back = super::recommend::parse_duration(text).map_err(|e| {
        anyhow::anyhow!("--since {text:?}: neither an RFC 3339 time nor a duration ({e})")
    })?;
    let at = jiff::Timestamp::now()
        .checked_sub(back)
        .map_err(|e| anyhow::anyhow!("--since {text:?}: {e}"))?;
    Ok(at.to_string())
}

/// The label of a verdict in the table: `denied`, `allowed` (an isolated side allows it) or
/// `not-isolated`.
fn verdict_label(v: &crate::policy::Verdict) -> &'static str {
    use crate::policy::SideResult::NotIsolated;
    match (v.allowed, v.ingress.result, v.egress.result) {
        (false, ..) => "denied",
        (true, NotIsolated, NotIsolated) => "not-isolated",
        (true, ..) => "allowed",
    }
}

/// The table of `flows` (with their verdicts), for people.
pub(super) fn observed_table(flows: Vec<ObservedFlow>) -> String {
    let verdicts: Vec<Option<String>> = flows
        .iter()
        .map(|f| f.verdict.as_ref().map(|v| verdict_label(v).to_owned()))
        .collect();
    let records: Vec<FlowRecord> = flows.into_iter().map(|f| f.flow).collect();
    table::render(&records, &verdicts)
}

impl Args {}

/// Reads `/api/v1/flows` of the agent at `base` with `query` (a query string without `?`),
/// sending `token` if any.
pub(crate) async fn fetch(
    base: &str,
    query: &str,
    token: Option<&BearerToken>,
) -> anyhow::Result<Vec<ObservedFlow>> {
    let url = format!("{}/api/v1/flows?{query}", base.trim_end_matches('/'));
    let resp = client::get(&reqwest::Client::new(), &url, token)
        .send()
        .await
        .with_context(|| format!("cannot reach the agent at {url}"))?;
    let status = resp.status();
    let truncated = resp
        .headers()
        .get(TRUNCATED_HEADER)
        .is_some_and(|v| v == "true");
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let mut msg = format!("{url}: HTTP {status}: {}", body.trim());
        if let Some(hint) = client::refusal_hint(status, token) {
            msg.push_str(&format!(" ({hint})"));
        }
        anyhow::bail!(msg);
    }
    if truncated {
        errln!(
            "warning: {url}: the agent holds more matching flows than one answer carries; \
             these are the most recent"
        );
    }
    body.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: ObservedFlow = serde_json::from_str(l)
                .with_context(|| format!("{url}: line {}: invalid flow record", i + 1))?;
            f.flow
                .check_names()
                .with_context(|| format!("{url}: line {}: rejected flow record", i + 1))?;
            Ok(f)
        })
        .collect()
}

fn query_string(p: &FlowParams) -> String {
    let limit = p.limit.map(|n| n.to_string());
    let mut parts = Vec::new();
    for (k, v) in [
        ("namespace", &p.namespace),
        ("workload", &p.workload),
        ("verdict", &p.verdict),
        ("since", &p.since),
        ("limit", &limit),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    parts.join("&")
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `netpol-observe flows`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let params = args.params()?;
    let query: FlowQuery = params
        .clone_query()
        .map_err(|e| anyhow::anyhow!("invalid filter: {e}"))?;
    let mut flows = Vec::new();
    let mut bad = 0usize;
    let mut with_verdict = false;
    let mut read_any = false;
    if let Some(path) = &args.file {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if name == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            Box::new(BufReader::new(
                std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?,
            ))
        };
        for (number, line) in jsonl::text_lines(path, reader) {
            let line = match line {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => line,
                Err(e) => {
                    bad += 1;
                    errln!("error: {}", Chain(&e));
                    continue;
                }
            };
            match serde_json::from_str::<ObservedFlow>(&line) {
                Ok(f) => match f.flow.check_names() {
                    Ok(()) => {
                        read_any = true;
                        with_verdict |= f.verdict.is_some();
                        if query.matches(&f) {
                            flows.push(f);
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        errln!(
                            "error: {name}:{number}: rejected flow record: {}",
                            Chain(&e)
                        );
                    }
                },
                Err(e) => {
                    bad += 1;
                    errln!("error: {name}:{number}: invalid flow record: {e}");
                }
            }
        }
        if args.verdict.is_some() && read_any && !with_verdict {
            anyhow::bail!(
                "--verdict: the flows of {name} carry no verdict (records from an agent's \
                 /api/v1/flows or `netpol-observe evaluate` do)"
            );
        }
        // The most recent, as an agent answers.
        if let Some(n) = args.limit
            && flows.len() > n
        {
            flows.sort_by_key(|f| f.flow.last_seen.or(f.flow.first_seen));
            flows.drain(..flows.len() - n);
        }
    } else {
        let qs = query_string(&params);
        let token = client::bearer_token(args.token_file.as_deref()).await?;
        for base in &args.agent {
            flows.extend(fetch(base, &qs, token.as_ref()).await?);
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Table => {
            out.write_all(observed_table(flows).as_bytes())
                .map_err(OutputError::from)?;
        }
        Output::Jsonl => {
            for f in &flows {
                jsonl::write_line(&mut out, f).map_err(OutputError::from)?;
            }
        }
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &flows)
                .map_err(|e| OutputError::from(std::io::Error::from(e)))?;
            out.write_all(b"\n").map_err(OutputError::from)?;
        }
    }
    out.flush().map_err(OutputError::from)?;
    if bad > 0 {
        errln!("error: {bad} flow line(s) could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded() {
        let p = FlowParams {
            namespace: Some("shop".into()),
            since: Some("2026-11-22T15:00:00+01:00".into()),
            ..FlowParams::default()
        };
        assert_eq!(
            query_string(&p),
            "namespace=shop&since=2026-11-22T15%3A00%3A00%2B01%3A00"
        );
    }
}
