//! The model builder thread: loads files and builds models beside the event loop.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{AgentError, Model};
use crate::{
    attribution::Subnets,
    inventory::{Inventory, InventoryError, NetworkPolicy, Validation},
    report::Chain,
};

/// Loads inventory files as `validation` says, logging its warnings.
pub(super) fn load_inventory(
    path: &Path,
    validation: Validation,
) -> Result<Inventory, InventoryError> {
    let loaded = Inventory::load(path, validation)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.inventory)
}

/// Loads the staged (draft) policies of `--staged-policies`.
pub(super) fn load_staged(
    path: &Path,
    validation: Validation,
) -> Result<Vec<NetworkPolicy>, AgentError> {
    load_inventory(path, validation)
        .map(|i| i.network_policies)
        .map_err(|source| AgentError::Staged {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// A request to the model builder thread ([`spawn_rebuilder`]).
pub(super) enum Rebuild {
    /// Reload the inventory files at this path.
    LoadInventory(PathBuf),
    /// A new snapshot of the live inventory.
    Snapshot(Arc<Inventory>),
    /// Reload the staged policies at this path.
    LoadStaged(PathBuf),
}

/// What the model builder thread reports for a batch of requests.
pub(super) struct Rebuilt {
    /// The new model, or why it does not compile; `None` when there is nothing to build.
    pub(super) model: Option<Result<Arc<Model>, String>>,
    /// The outcome of an inventory file reload in the batch (the error names file and field).
    pub(super) inventory_load: Option<Result<(), String>>,
}

/// Starts the thread that loads files and builds models; requests that queue up while it
/// works are handled together (one model for the lot). It ends when the sender is dropped or
/// the receiver is gone; nobody waits for it at shutdown.
pub(super) fn spawn_rebuilder(
    subnets: Subnets,
    validation: Validation,
    mut inventory: Option<Arc<Inventory>>,
    mut staged: Option<Vec<NetworkPolicy>>,
    out: tokio::sync::mpsc::UnboundedSender<Rebuilt>,
) -> std::sync::mpsc::Sender<Rebuild> {
    let (tx, rx) = std::sync::mpsc::channel::<Rebuild>();
    let spawned = std::thread::Builder::new()
        .name("model-builder".into())
        .spawn(move || {
            // The last model built: a batch of live snapshots alone updates it for the pods
            // that changed (`Model::next`); anything else builds anew.
            let mut last: Option<Arc<Model>> = None;
            while let Ok(first) = rx.recv() {
                let mut inventory_load = None;
                let mut changed = false;
                let mut snapshots_only = true;
                for request in std::iter::once(first).chain(rx.try_iter()) {
                    snapshots_only &= matches!(request, Rebuild::Snapshot(_));
                    match request {
                        Rebuild::LoadInventory(p) => match load_inventory(&p, validation) {
                            Ok(inv) => {
                                tracing::info!(path = %p.display(), pods = inv.pods.len(), "inventory reloaded");
                                inventory = Some(Arc::new(inv));
                                inventory_load = Some(Ok(()));
                                changed = true;
                            }
                            Err(e) => {
                                tracing::error!("inventory reload failed, keeping the previous one: {}", Chain(&e));
                                inventory_load = Some(Err(format!(
                                    "inventory reload failed (the previous one is in use): {}",
                                    Chain(&e)
                                )));
                            }
                        },
                        Rebuild::Snapshot(inv) => {
                            inventory = Some(inv);
                            changed = true;
                        }
                        Rebuild::LoadStaged(p) => match load_staged(&p, validation) {
                            Ok(s) => {
                                tracing::info!(path = %p.display(), policies = s.len(), "staged policies reloaded");
                                staged = Some(s);
                                changed = true;
                            }
                            Err(e) => tracing::error!(
                                "staged policies reload failed, keeping the previous ones: {}",
                                Chain(&e)
                            ),
                        },
                    }
                }
                let model = inventory.as_ref().filter(|_| changed).map(|inv| {
                    let built = match last.as_ref().filter(|_| snapshots_only) {
                        Some(prev) => prev.next(Arc::clone(inv), &subnets, staged.as_deref()),
                        None => Model::new(Arc::clone(inv), &subnets, staged.as_deref()),
                    };
                    built
                        .map(Arc::new)
                        .inspect(|m| last = Some(Arc::clone(m)))
                        .map_err(|e| {
                            tracing::error!("policies do not compile, keeping the previous model: {}", Chain(&e));
                            Chain(&e).to_string()
                        })
                });
                if out.send(Rebuilt { model, inventory_load }).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the model builder thread: {e}; the inventory is not reloaded"
        );
    }
    tx
}
