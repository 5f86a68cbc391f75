//! Loading the commands' Kubernetes objects: unknown fields as `--validate` says, the loader's
//! warnings (unknown fields with `--validate=warn`, objects without a namespace) on stderr.

use std::path::Path;

use anyhow::Context;

use super::out::errln;
use crate::inventory::{Inventory, InventoryError, Validation};

/// The help of every `--validate` option.
pub(crate) const VALIDATE_HELP: &str = "How fields the Kubernetes types do not know are treated in \
inventory and policy files: strict (an error naming file, document, object and field, as kubectl \
--validate=strict), warn (a warning each, then ignored: files from a newer Kubernetes), ignore";

/// Reads the Kubernetes objects under `path` (`what` names them in errors: `the inventory`,
/// `the policies`), printing the warnings.
pub(crate) fn load(path: &Path, validation: Validation, what: &str) -> anyhow::Result<Inventory> {
    let loaded = Inventory::load(path, validation)
        .map_err(|e| match e {
            InventoryError::UnknownFields { .. } => anyhow::anyhow!(
                "{e} (a typo, or a field of a newer Kubernetes: --validate=warn reports and ignores such fields)"
            ),
            e => e.into(),
        })
        .with_context(|| format!("cannot load {what} {}", path.display()))?;
    for w in &loaded.warnings {
        errln!("warning: {w}");
    }
    Ok(loaded.inventory)
}
