//! Drift: flows outside a baseline of known dependencies.
//!
//! An **edge** is (source peer, destination peer, destination port, protocol) at workload
//! level, the peers named exactly as the metrics name them ([`PeerLabels`] without the pod:
//! namespace + workload kind + workload; a Service's backend workload; `Subnet` peers by subnet
//! name or `private`/`world`; `Node` peers by node name; `Unknown`).
//!
//! The **baseline file** is JSON lines, one object per line, each with `"version": 1`
//! ([`FORMAT_VERSION`]; a missing `version` is 1, any other value an error):
//!
//! ```text
//! {"version":1,"learning_since":"2026-05-04T10:00:00Z"}
//! {"version":1,"src":{"namespace":"frontend","kind":"Deployment","workload":"web"},"dst":{"namespace":"backend","kind":"Deployment","workload":"api"},"port":9000,"protocol":"TCP","first_seen":"2026-05-04T10:00:03Z"}
//! {"version":1,"src":{"namespace":"backend","kind":"Deployment","workload":"api"},"dst":{"kind":"Subnet","workload":"db-subnet"},"port":5432,"protocol":"TCP"}
//! ```
//!
//! - an edge line: `src` and `dst` (`namespace` — omitted or `""` for a peer that is not a pod —,
//!   `kind`, `workload`), `port` (omitted or `null` for ICMP), `protocol` (`TCP`, `UDP`, `SCTP`,
//!   `ICMP`, `ICMPv6`), `first_seen` (RFC 3339, optional);
//! - at most one `learning_since` line, written by an agent that learns ([`Drift`]): when its
//!   learning period began, so a restarted agent resumes the same period;
//! - blank lines are ignored; anything else is an error naming `FILE:LINE`.
//!
//! A flow's **drift kind** ([`Baseline::classify`]): `new_port` when its source→destination
//! pair is in the baseline on another port or protocol; otherwise `new_destination` when the
//! destination is outside the cluster (kind `Subnet`: a named subnet, `private` or `world`),
//! `new_pair` for any other destination (a pod's workload, a node, an unknown address).

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{
    flow::Protocol,
    metrics::{PeerLabels, labels::KIND_SUBNET},
};

pub use crate::metrics::labels::DriftKind;

/// The baseline format's version (the `version` field of every line).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Drift edges listed by `/api/v1/drift` at most; the flows of further edges count in
/// `overflow`.
pub(crate) const MAX_DRIFT_ENTRIES: usize = 10_000;

/// Edges an agent learns at most (a baseline file may hold more).
pub(crate) const MAX_LEARNED_EDGES: usize = 100_000;

/// Drift edges logged (one line each) at most; then one line saying the rest are only counted.
pub(crate) const MAX_LOGGED: usize = 1_024;

/// One dependency: who talks to whom on which port, at workload level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    /// The initiator (workload-level labels: `pod` is `None`).
    pub src: Arc<PeerLabels>,
    /// The responder.
    pub dst: Arc<PeerLabels>,
    /// Destination port (`None` for ICMP).
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

impl Edge {
    /// The edge between two peers' labels (a pod name in them is dropped).
    pub fn new(
        src: &Arc<PeerLabels>,
        dst: &Arc<PeerLabels>,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Edge {
        let workload = |p: &Arc<PeerLabels>| {
            if p.pod.is_none() {
                Arc::clone(p)
            } else {
                Arc::new(PeerLabels {
                    pod: None,
                    ..(**p).clone()
                })
            }
        };
        Edge {
            src: workload(src),
            dst: workload(dst),
            port: if protocol.has_ports() { port } else { None },
            protocol,
        }
    }

    /// `ns/workload` (a pod's), else the workload (subnet, node) name.
    pub fn peer_name(p: &PeerLabels) -> String {
        if p.namespace.is_empty() {
            p.workload.clone()
        } else {
            format!("{}/{}", p.namespace, p.workload)
        }
    }
}

/// Errors of a baseline file: each names the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file cannot be read.
    #[error("cannot read the drift baseline {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a baseline line.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be written.
    #[error("cannot write the drift baseline {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A peer as a baseline line spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    kind: String,
    workload: String,
}

impl PeerJson {
    fn of(p: &PeerLabels) -> PeerJson {
        PeerJson {
            namespace: p.namespace.clone(),
            kind: p.kind.clone(),
            workload: p.workload.clone(),
        }
    }

    fn labels(self) -> Result<PeerLabels, String> {
        if self.kind.is_empty() || self.workload.is_empty() {
            return Err("a peer needs a non-empty `kind` and `workload`".to_owned());
        }
        let pod_kind = self.kind.chars().next().is_some_and(char::is_uppercase)
            && !matches!(self.kind.as_str(), "Subnet" | "Node" | "Unknown" | "Other");
        if pod_kind == self.namespace.is_empty() {
            return Err(format!(
                "peer kind {:?}: a workload kind (Deployment, …) needs a `namespace`, kinds Subnet, Node and Unknown have none",
                self.kind
            ));
        }
        Ok(PeerLabels {
            namespace: self.namespace,
            kind: self.kind,
            workload: self.workload,
            pod: None,
        })
    }
}

/// One line of a baseline file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default = "format_version")]
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    learning_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<PeerJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dst: Option<PeerJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seen: Option<Timestamp>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

/// A set of edges (with when each was first seen) and, for a learning agent, when its learning
/// period began.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    edges: HashMap<Edge, Option<Timestamp>>,
    pairs: HashSet<(Arc<PeerLabels>, Arc<PeerLabels>)>,
    /// When the learning period of the agent that wrote the file began.
    pub learning_since: Option<Timestamp>,
}

impl Baseline {
    /// Reads a baseline file; a missing file is an empty baseline. The first bad line is an
    /// error naming `FILE:LINE`.
    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        match std::fs::File::open(path) {
            Ok(f) => Self::parse(path, std::io::BufReader::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Baseline::default()),
            Err(source) => Err(BaselineError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses baseline lines from `reader` (`path` names it in errors).
    pub fn parse(path: &Path, reader: impl BufRead) -> Result<Baseline, BaselineError> {
        let mut b = Baseline::default();
        let bad = |line: usize, message: String| BaselineError::Line {
            path: path.to_owned(),
            line,
            message,
        };
        for (n, text) in crate::flow::jsonl::text_lines(path, reader) {
            let text = text.map_err(|e| match e {
                crate::flow::jsonl::FlowLineError::Io { source, .. } => BaselineError::Read {
                    path: path.to_owned(),
                    source,
                },
                e => bad(n, crate::report::Chain(&e).to_string()),
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(n, format!("not JSON: {e}")))?;
            match value.get("version") {
                None => {}
                Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => {}
                Some(v) => {
                    return Err(bad(
                        n,
                        format!(
                            "baseline format version {v} is not supported (this netpol-observe reads version {FORMAT_VERSION})"
                        ),
                    ));
                }
            }
            let line: Line = serde_json::from_value(value)
                .map_err(|e| bad(n, format!("not a baseline line: {e}")))?;
            match (line.src, line.dst, line.protocol) {
                (None, None, None) => {
                    let Some(since) = line.learning_since else {
                        return Err(bad(
                            n,
                            "neither an edge (src, dst, port, protocol) nor a learning_since line"
                                .to_owned(),
                        ));
                    };
                    if b.learning_since.is_some() {
                        return Err(bad(n, "a second learning_since line".to_owned()));
                    }
                    b.learning_since = Some(since);
                }
                (Some(src), Some(dst), Some(protocol)) => {
                    if line.learning_since.is_some() {
                        return Err(bad(
                            n,
                            "learning_since belongs on a line of its own".to_owned(),
                        ));
                    }
                    if protocol.has_ports() && line.port.is_none() {
                        return Err(bad(n, format!("a {protocol} edge needs a `port`")));
                    }
                    let src = Arc::new(src.labels().map_err(|m| bad(n, format!("src: {m}")))?);
                    let dst = Arc::new(dst.labels().map_err(|m| bad(n, format!("dst: {m}")))?);
                    b.insert(Edge::new(&src, &dst, line.port, protocol), line.first_seen);
                }
                _ => {
                    return Err(bad(
                        n,
                        "an edge needs `src`, `dst` and `protocol` (and `port` but for ICMP)"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(b)
    }

    /// Adds the edge of flow record `f`, attributed with `attributor` as the agent attributes
    /// it (fields already there are kept): what an agent would learn from it. A record another
    /// node counts (`counted: false`) adds nothing: `false`.
    pub fn insert_record(
        &mut self,
        f: &crate::flow::FlowRecord,
        attributor: &crate::attribution::Attributor,
    ) -> bool {
        if !f.counted {
            return false;
        }
        let mut f = f.clone();
        attributor.attribute(&mut f);
        let src = Arc::new(PeerLabels::from_endpoint(&f.src, false));
        let dst = Arc::new(PeerLabels::from_endpoint(&f.dst, false));
        let edge = Edge::new(&src, &dst, f.dst.port, f.protocol);
        self.insert(edge, f.seen_at());
        true
    }

    /// Adds `edge` (first seen at `first_seen`); `false` when it was already there (an earlier
    /// `first_seen` is kept).
    pub fn insert(&mut self, edge: Edge, first_seen: Option<Timestamp>) -> bool {
        self.pairs
            .insert((Arc::clone(&edge.src), Arc::clone(&edge.dst)));
        match self.edges.get_mut(&edge) {
            Some(t) => {
                *t = match (*t, first_seen) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                false
            }
            None => {
                self.edges.insert(edge, first_seen);
                true
            }
        }
    }

    /// Whether `edge` is in the baseline.
    pub fn contains(&self, edge: &Edge) -> bool {
        self.edges.contains_key(edge)
    }

    /// How `edge` is outside the baseline (`None`: it is in it). See the module docs.
    pub fn classify(&self, edge: &Edge) -> Option<DriftKind> {
        if self.contains(edge) {
            return None;
        }
        Some(
            if self
                .pairs
                .contains(&(Arc::clone(&edge.src), Arc::clone(&edge.dst)))
            {
                DriftKind::NewPort
            } else if edge.dst.kind == KIND_SUBNET {
                DriftKind::NewDestination
            } else {
                DriftKind::NewPair
            },
        )
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether there is no edge.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The edges, sorted, with their first-seen times.
    pub fn edges(&self) -> Vec<(&Edge, Option<Timestamp>)> {
        let mut v: Vec<_> = self.edges.iter().map(|(e, t)| (e, *t)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Writes the baseline as JSON lines: the `learning_since` line first, then the edges
    /// sorted by source, destination, protocol and port.
    pub fn write(&self, mut out: impl Write) -> std::io::Result<()> {
        let mut line = |l: &Line| -> std::io::Result<()> {
            serde_json::to_writer(&mut out, l)?;
            out.write_all(b"\n")
        };
        if let Some(since) = self.learning_since {
            line(&Line {
                version: FORMAT_VERSION,
                learning_since: Some(since),
                src: None,
                dst: None,
                port: None,
                protocol: None,
                first_seen: None,
            })?;
        }
        for (e, first_seen) in self.edges() {
            line(&Line {
                version: FORMAT_VERSION,
                learning_since: None,
                src: Some(PeerJson::of(&e.src)),
                dst: Some(PeerJson::of(&e.dst)),
                port: e.port,
                protocol: Some(e.protocol),
                first_seen,
            })?;
        }
        Ok(())
    }

    /// Writes the baseline to `path` atomically: a temporary file in the same directory,
    /// flushed to disk, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let err = |source| BaselineError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "baseline".to_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            self.write(&mut f)?;
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }
}

/// What [`Drift::observe`] made of a flow's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// In the baseline.
    Known,
    /// Learned now (the learning period is on): joins the baseline.
    Learned,
    /// Outside the baseline; `first` the first flow of this edge (log it).
    Drift {
        /// How it is new.
        kind: DriftKind,
        /// The first flow of this drift edge since the agent started (or the baseline was
        /// replaced).
        first: bool,
    },
}

/// One drift edge as `/api/v1/drift` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEntry {
    /// The initiator.
    pub src: serde_json::Value,
    /// The responder.
    pub dst: serde_json::Value,
    /// Destination port (`null` for ICMP).
    pub port: Option<u16>,
    /// Protocol.
    pub protocol: Protocol,
    /// `new_pair`, `new_port` or `new_destination`.
    pub kind: DriftKind,
    /// The first flow's first-seen time.
    pub first_seen: Timestamp,
    /// The latest flow's first-seen time.
    pub last_seen: Timestamp,
    /// Flows of this edge outside the baseline.
    pub flows: u64,
}

/// The answer of `/api/v1/drift`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    /// The baseline file.
    pub baseline: PathBuf,
    /// Edges in the baseline (learned ones included).
    pub baseline_edges: usize,
    /// Until when new edges are learned (`null`: not learning).
    pub learning_until: Option<Timestamp>,
    /// Whether the agent is learning now.
    pub learning: bool,
    /// The drift edges, oldest first (at most [`MAX_DRIFT_ENTRIES`]).
    pub drift: Vec<DriftEntry>,
    /// Drift flows of edges not listed (the list was full).
    pub overflow: u64,
}

#[derive(Debug, Clone)]
struct Tracked {
    kind: DriftKind,
    first_seen: Timestamp,
    last_seen: Timestamp,
    flows: u64,
}

/// An agent's drift state: its baseline (loaded from, learned into and persisted to
/// `path`), and the drift edges seen.
#[derive(Debug)]
pub struct Drift {
    path: PathBuf,
    learn: SignedDuration,
    baseline: Baseline,
    /// Learned edges not written yet.
    dirty: bool,
    /// The file as last read or written (to notice a replacement).
    stamp: Option<FileStamp>,
    entries: HashMap<Edge, Tracked>,
    overflow: u64,
    logged: usize,
    learned_full: bool,
    learning_ended_logged: bool,
    write_failed: bool,
}

/// What identifies a version of a file: inode, size, modification time.
type FileStamp = (u64, u64, Option<std::time::SystemTime>);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.len(), m.modified().ok()))
}

impl Drift {
    /// Loads the baseline at `path` (missing: empty) at time `now`. With `learn` > 0, an empty
    /// baseline without a `learning_since` line starts a learning period at `now`; one with it
    /// resumes that period.
    pub fn open(
        path: &Path,
        learn: SignedDuration,
        now: Timestamp,
    ) -> Result<Drift, BaselineError> {
        let stamp = stamp(path);
        let baseline = Baseline::load(path)?;
        let mut d = Drift {
            path: path.to_owned(),
            learn,
            baseline: Baseline::default(),
            dirty: false,
            stamp,
            entries: HashMap::new(),
            overflow: 0,
            logged: 0,
            learned_full: false,
            learning_ended_logged: false,
            write_failed: false,
        };
        d.install(baseline, now);
        Ok(d)
    }

    fn install(&mut self, mut baseline: Baseline, now: Timestamp) {
        if self.learn.is_positive() && baseline.learning_since.is_none() && baseline.is_empty() {
            baseline.learning_since = Some(now);
            self.dirty = true;
        }
        self.baseline = baseline;
        self.learning_ended_logged = false;
        let until = self.learning_until();
        tracing::info!(
            path = %self.path.display(),
            edges = self.baseline.len(),
            learning_until = ?until.filter(|u| *u > now).map(|u| u.to_string()),
            "drift baseline loaded"
        );
        // Edges the new baseline holds are no drift any more; the others may be new in
        // another way.
        let b = &self.baseline;
        self.entries.retain(|e, t| match b.classify(e) {
            Some(kind) => {
                t.kind = kind;
                true
            }
            None => false,
        });
    }

    /// The end of the learning period (`None`: no learning).
    pub(crate) fn learning_until(&self) -> Option<Timestamp> {
        if !self.learn.is_positive() {
            return None;
        }
        self.baseline
            .learning_since
            .and_then(|s| s.checked_add(self.learn).ok())
    }

    /// The baseline in use.
    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// Judges a counted flow's `edge`, first seen at `at`: known, learned (within the
    /// learning period, bounded by [`MAX_LEARNED_EDGES`]), or drift (tracked for the API).
    pub fn observe(&mut self, edge: Edge, at: Timestamp) -> Observed {
        if self.baseline.contains(&edge) {
            return Observed::Known;
        }
        if self.learning_until().is_some_and(|until| at < until) {
            if self.baseline.len() < MAX_LEARNED_EDGES {
                self.baseline.insert(edge, Some(at));
                self.dirty = true;
                return Observed::Learned;
            }
            if !self.learned_full {
                self.learned_full = true;
                tracing::warn!(
                    "drift baseline: {MAX_LEARNED_EDGES} edges learned, no more are learned (the others are reported as drift)"
                );
            }
        }
        let Some(kind) = self.baseline.classify(&edge) else {
            return Observed::Known;
        };
        if let Some(t) = self.entries.get_mut(&edge) {
            t.flows += 1;
            t.first_seen = t.first_seen.min(at);
            t.last_seen = t.last_seen.max(at);
            return Observed::Drift { kind, first: false };
        }
        if self.entries.len() >= MAX_DRIFT_ENTRIES {
            self.overflow += 1;
            return Observed::Drift { kind, first: false };
        }
        self.entries.insert(
            edge,
            Tracked {
                kind,
                first_seen: at,
                last_seen: at,
                flows: 1,
            },
        );
        Observed::Drift { kind, first: true }
    }

    /// Whether a drift edge should be logged (the first [`MAX_LOGGED`]; one line then says
    /// the rest are only counted).
    pub(crate) fn should_log(&mut self) -> bool {
        if self.logged < MAX_LOGGED {
            self.logged += 1;
            return true;
        }
        if self.logged == MAX_LOGGED {
            self.logged += 1;
            tracing::warn!(
                "more than {MAX_LOGGED} drift edges: the others are only counted in netpol_observe_drift_flows_total and listed on /api/v1/drift"
            );
        }
        false
    }

    /// Reloads the baseline when its file changed since it was last read or written (a
    /// replacement, a removal: an empty baseline). A bad file is an error and the baseline in
    /// use is kept. `None`: unchanged.
    pub(crate) fn reload_if_changed(
        &mut self,
        now: Timestamp,
    ) -> Option<Result<(), BaselineError>> {
        let current = stamp(&self.path);
        if current == self.stamp {
            return None;
        }
        let loaded = Baseline::load(&self.path);
        // Stamp taken before the read: a change during the read is seen at the next poll.
        self.stamp = current;
        Some(loaded.map(|b| {
            self.dirty = false;
            self.learned_full = false;
            self.install(b, now);
        }))
    }

    /// Writes the learned edges when there are new ones (and logs the end of the learning
    /// period once). A failure is logged once until a write succeeds; the edges stay learned
    /// in memory and the write is tried again next time.
    pub(crate) fn persist(&mut self, now: Timestamp) {
        if let Some(until) = self.learning_until()
            && now >= until
            && !self.learning_ended_logged
        {
            self.learning_ended_logged = true;
            tracing::info!(
                edges = self.baseline.len(),
                "drift learning period over: new edges are reported as drift"
            );
        }
        if !self.dirty {
            return;
        }
        match self.baseline.save(&self.path) {
            Ok(()) => {
                self.dirty = false;
                self.write_failed = false;
                self.stamp = stamp(&self.path);
            }
            Err(e) => {
                if !self.write_failed {
                    self.write_failed = true;
                    tracing::warn!(
                        "{}; the learned edges are kept in memory and written again later",
                        crate::report::Chain(&e)
                    );
                }
            }
        }
    }

    /// The `/api/v1/drift` answer at `now`.
    pub fn report(&self, now: Timestamp) -> DriftReport {
        let peer = |p: &PeerLabels| serde_json::to_value(PeerJson::of(p)).unwrap_or_default();
        let mut drift: Vec<DriftEntry> = self
            .entries
            .iter()
            .map(|(e, t)| DriftEntry {
                src: peer(&e.src),
                dst: peer(&e.dst),
                port: e.port,
                protocol: e.protocol,
                kind: t.kind,
                first_seen: t.first_seen,
                last_seen: t.last_seen,
                flows: t.flows,
            })
            .collect();
        drift.sort_by(|a, b| {
            (a.first_seen, a.src.to_string(), a.dst.to_string(), a.port).cmp(&(
                b.first_seen,
                b.src.to_string(),
                b.dst.to_string(),
                b.port,
            ))
        });
        let until = self.learning_until();
        DriftReport {
            baseline: self.path.clone(),
            baseline_edges: self.baseline.len(),
            learning_until: until,
            learning: until.is_some_and(|u| now < u),
            drift,
            overflow: self.overflow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ns: &str, kind: &str, w: &str) -> Arc<PeerLabels> {
        Arc::new(PeerLabels {
            namespace: ns.to_owned(),
            kind: kind.to_owned(),
            workload: w.to_owned(),
            pod: None,
        })
    }

    #[test]
    fn a_baseline_round_trips_and_classifies() {
        let web = peer("frontend", "Deployment", "web");
        let api = peer("backend", "Deployment", "api");
        let db = peer("", "Subnet", "db-subnet");
        let mut b = Baseline {
            learning_since: Some("2026-05-04T10:00:00Z".parse().unwrap()),
            ..Baseline::default()
        };
        b.insert(Edge::new(&web, &api, Some(9000), Protocol::Tcp), None);
        b.insert(Edge::new(&api, &db, Some(5432), Protocol::Tcp), None);
        let mut text = Vec::new();
        b.write(&mut text).unwrap();
        let back = Baseline::parse(Path::new("b.jsonl"), text.as_slice()).unwrap();
        assert_eq!(back, b);
        let e = |s, d, p| Edge::new(s, d, Some(p), Protocol::Tcp);
        assert_eq!(back.classify(&e(&web, &api, 9000)), None);
        assert_eq!(
            back.classify(&e(&web, &api, 9100)),
            Some(DriftKind::NewPort)
        );
        assert_eq!(
            back.classify(&e(&web, &db, 5432)),
            Some(DriftKind::NewDestination)
        );
        assert_eq!(back.classify(&e(&api, &db, 5433)), Some(DriftKind::NewPort));
        assert_eq!(back.classify(&e(&api, &web, 80)), Some(DriftKind::NewPair));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let good = r#"{"version":1,"src":{"namespace":"a","kind":"Deployment","workload":"x"},"dst":{"kind":"Subnet","workload":"world"},"port":443,"protocol":"TCP"}"#;
        for (bad, want) in [
            ("{", "not JSON"),
            (r#"{"version":2}"#, "version 2 is not supported"),
            (r#"{"version":1}"#, "neither an edge"),
            (
                r#"{"src":{"kind":"Deployment","workload":"x"},"dst":{"kind":"Subnet","workload":"world"},"port":1,"protocol":"TCP"}"#,
                "needs a `namespace`",
            ),
            (
                r#"{"src":{"namespace":"a","kind":"Deployment","workload":"x"},"dst":{"kind":"Subnet","workload":"world"},"protocol":"TCP"}"#,
                "needs a `port`",
            ),
            (r#"{"colour":"red"}"#, "unknown field"),
        ] {
            let text = format!("{good}\n\n{bad}\n");
            let err = Baseline::parse(Path::new("base.jsonl"), text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("base.jsonl:3: "), "{bad}: {err}");
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
