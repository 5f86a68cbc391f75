//! `/readyz`: what the agent still waits for, or what is wrong with its inventory's source.
//! Its own small lock, written by the event loop and read by the HTTP API; a leaf (nothing is
//! locked while it is held, and it is never taken under the flows lock).

use super::{AgentState, lock};

/// Why the agent is not ready (for `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Readiness {
    datapath: bool,
    /// A model is installed.
    inventory: bool,
    /// Why the last model could not be built (cleared by the next model).
    inventory_error: Option<String>,
    /// What is wrong with the inventory's source now (API watches failing, a file that does not
    /// load): the model in use may be stale. Cleared when the source works again.
    source_problem: Option<String>,
    /// `source_problem` is a failure (not a first sync in progress).
    source_failed: bool,
}

impl AgentState {
    fn readiness(&self) -> std::sync::MutexGuard<'_, Readiness> {
        lock(&self.readiness)
    }

    /// `Ok` when ready; else what is missing (`/readyz`).
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let r = self.readiness();
        let mut missing = Vec::new();
        if !r.datapath {
            missing.push("datapath and drop tracepoint not attached yet".to_owned());
        }
        if !r.inventory && (r.source_problem.is_none() || r.inventory_error.is_some()) {
            missing.push(match &r.inventory_error {
                Some(e) => format!("inventory not loaded: {e}"),
                None => "inventory not synced yet".to_owned(),
            });
        }
        if let Some(p) = &r.source_problem {
            missing.push(p.clone());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    pub(super) fn set_datapath_ready(&self) {
        self.readiness().datapath = true;
    }

    /// A model is in use (clears the last model error).
    pub(super) fn set_inventory_ready(&self) {
        let mut r = self.readiness();
        r.inventory = true;
        r.inventory_error = None;
    }

    pub(super) fn set_inventory_error(&self, e: String) {
        self.readiness().inventory_error = Some(e);
    }

    /// Records what is wrong with the inventory's source (`None`: it works; `failing`: an error,
    /// not only a sync in progress), logging changes.
    pub(super) fn set_source_problem(&self, problem: Option<String>, failing: bool) {
        let mut r = self.readiness();
        if r.source_problem != problem {
            match &problem {
                Some(p) if failing => tracing::warn!("not ready: {p}"),
                Some(p) => tracing::debug!("not ready: {p}"),
                None if r.source_problem.as_ref().is_some_and(|_| r.source_failed) => {
                    tracing::info!("inventory source healthy again")
                }
                None => tracing::info!("inventory synced"),
            }
            r.source_problem = problem;
            r.source_failed = failing;
        }
    }
}
