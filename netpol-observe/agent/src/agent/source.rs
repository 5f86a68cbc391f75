//! Where the inventory comes from (files polled for changes, or the live inventory) and its
//! health as `/readyz` and the `inventory_synced` gauges say it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use jiff::Timestamp;

use super::{
    AgentConfig, AgentError, AgentState, Model,
    rebuild::{Rebuild, load_inventory, load_staged},
};
use crate::{
    attribution::Subnets,
    inventory::{
        Inventory, NetworkPolicy, WATCHED_RESOURCES,
        kubeapi::{self, KubeAccess},
        live,
    },
    report::Chain,
};

/// A cheap fingerprint of a file or directory (names, sizes, modification times) to notice
/// changes.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (p.to_owned(), m.len(), m.modified().ok()))
            .unwrap_or_else(|_| (p.to_owned(), 0, None))
    };
    let mut out = vec![stat(path)];
    if let Ok(dir) = std::fs::read_dir(path) {
        let mut entries: Vec<_> = dir.flatten().map(|e| stat(&e.path())).collect();
        entries.sort();
        out.extend(entries);
    }
    out
}

/// Where the inventory comes from.
pub(super) enum Source {
    /// Standalone: files, polled for changes.
    Files(PathBuf),
    /// In-cluster: the live inventory.
    Live(live::LiveInventory),
    /// Neither could be set up: flows stay unattributed.
    None,
}

/// The file source's health changed: `None` healthy again, `Some(why)` failing.
pub(super) fn set_source_health(state: &AgentState, problem: Option<String>) {
    for (group, resource) in WATCHED_RESOURCES {
        state
            .metrics
            .set_inventory_synced(&resource_label(group, resource), problem.is_none());
    }
    let failing = problem.is_some();
    state.set_source_problem(problem, failing);
}

/// The fingerprints of the inventory files (standalone) and of the staged policies, polled
/// for changes.
pub(super) struct Fingerprints {
    inventory: Vec<(PathBuf, u64, Option<SystemTime>)>,
    staged: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl Fingerprints {
    pub(super) fn new(source: &Source, config: &AgentConfig) -> Self {
        Fingerprints {
            inventory: match source {
                Source::Files(p) => fingerprint(p),
                _ => Vec::new(),
            },
            staged: config
                .staged_policies
                .as_deref()
                .map(fingerprint)
                .unwrap_or_default(),
        }
    }

    /// Asks `rebuild` to load again the files whose fingerprint changed.
    pub(super) fn reload_changed(
        &mut self,
        source: &Source,
        config: &AgentConfig,
        rebuild: &std::sync::mpsc::Sender<Rebuild>,
    ) {
        if let Source::Files(p) = source {
            let now = fingerprint(p);
            if now != self.inventory {
                self.inventory = now;
                let _ = rebuild.send(Rebuild::LoadInventory(p.clone()));
            }
        }
        if let Some(p) = &config.staged_policies {
            let now = fingerprint(p);
            if now != self.staged {
                self.staged = now;
                let _ = rebuild.send(Rebuild::LoadStaged(p.clone()));
            }
        }
    }
}

/// What the agent reads from files at start.
pub(super) struct Files {
    pub(super) subnets: Subnets,
    pub(super) staged: Option<Vec<NetworkPolicy>>,
    /// The inventory files' objects (standalone).
    pub(super) inventory: Option<Arc<Inventory>>,
    pub(super) source: Source,
}

/// Loads subnets, staged policies, the drift baseline and, standalone, the inventory files,
/// and installs the first model: a bad file is an error before anything is attached.
pub(super) fn load_files(state: &AgentState, config: &AgentConfig) -> Result<Files, AgentError> {
    let subnets = match &config.subnets {
        Some(p) => Subnets::from_path(p)?,
        None => Subnets::default(),
    };
    let staged = match &config.staged_policies {
        Some(p) => Some(load_staged(p, config.validate)?),
        None => None,
    };
    state.open_drift(Timestamp::now())?;
    let Some(path) = &config.inventory else {
        return Ok(Files {
            subnets,
            staged,
            inventory: None,
            source: Source::None,
        });
    };
    let inv = Arc::new(load_inventory(path, config.validate)?);
    for (group, resource) in WATCHED_RESOURCES {
        state
            .metrics
            .set_inventory_synced(&resource_label(group, resource), true);
    }
    let model = Model::new(Arc::clone(&inv), &subnets, staged.as_deref())?;
    state.set_model(Arc::new(model));
    Ok(Files {
        subnets,
        staged,
        inventory: Some(inv),
        source: Source::Files(path.clone()),
    })
}

/// In-cluster: the live inventory from the API server, or none (flows stay unattributed,
/// `/readyz` says why).
pub(super) async fn connect_live(state: &AgentState, config: &AgentConfig) -> Source {
    let access = KubeAccess::infer(config.kubeconfig.clone());
    match kubeapi::client(&access).await {
        Ok((client, connected)) => {
            tracing::info!(server = %connected.server, via = %connected.via, "watching the API server");
            Source::Live(live::start(client, live::LiveOptions::default()))
        }
        Err(e) => {
            let msg = format!("no --inventory and {}; flows stay unattributed", Chain(&e));
            tracing::warn!("{msg}");
            state.set_inventory_error(msg);
            Source::None
        }
    }
}

/// A change of the live inventory's health: the synced gauges, `/readyz`, and the first model
/// once everything is listed.
pub(super) fn on_live_state(
    state: &AgentState,
    s: &live::SyncState,
    source: &Source,
    rebuild: &std::sync::mpsc::Sender<Rebuild>,
) {
    for (group, resource) in WATCHED_RESOURCES {
        let name = resource_label(group, resource);
        let ok = s.listed.contains(&name) && !s.errors.iter().any(|(r, _)| *r == name);
        state.metrics.set_inventory_synced(&name, ok);
    }
    state.set_source_problem(live_problem(s), !s.errors.is_empty());
    if s.synced
        && state.model().is_none()
        && let Source::Live(l) = source
    {
        let _ = rebuild.send(Rebuild::Snapshot(l.snapshot()));
    }
}

/// What keeps a live inventory from being trusted (`None`: synced and every watch works).
fn live_problem(s: &live::SyncState) -> Option<String> {
    // One line per distinct error (an outage fails every watch the same way).
    let mut by_error: Vec<(&str, Vec<&str>)> = Vec::new();
    for (resource, e) in &s.errors {
        match by_error.iter_mut().find(|(m, _)| *m == e.as_str()) {
            Some((_, rs)) => rs.push(resource),
            None => by_error.push((e, vec![resource])),
        }
    }
    let failing = by_error
        .iter()
        .map(|(e, rs)| format!("{}: {e}", rs.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    if !s.synced {
        let waiting: Vec<String> = WATCHED_RESOURCES
            .iter()
            .map(|(g, r)| resource_label(g, r))
            .filter(|name| !s.listed.contains(name))
            .collect();
        let mut why = if waiting.is_empty() {
            "inventory not synced: building the first snapshot".to_owned()
        } else {
            format!(
                "inventory not synced: waiting for the first list of {}",
                waiting.join(", ")
            )
        };
        if !failing.is_empty() {
            why.push_str(&format!(" (failing: {failing})"));
        }
        return Some(why);
    }
    (!failing.is_empty())
        .then(|| format!("API server watches failing, the inventory may be stale: {failing}"))
}

/// The `resource` label of a watched resource: `pods`, `networking.k8s.io/networkpolicies`.
fn resource_label(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{group}/{resource}")
    }
}
