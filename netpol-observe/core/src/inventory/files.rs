//! Loading Kubernetes objects from files: `List`s, multi-document YAML or single objects,
//! JSON or YAML, exactly as `kubectl get … -o yaml` prints them; a directory is read
//! recursively in name order (`*.yaml`, `*.yml`, `*.json`).

use std::path::{Path, PathBuf};

use crate::yaml::{self, Value};

use super::{Inventory, InventoryError, KubeObject, build};

/// How fields the Kubernetes types do not know are treated in files (`--validate`): a typo
/// (`podSelectr`, `ingres`) silently dropped would change verdicts where `kubectl` rejects the
/// object, so the default is strict.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// An unknown field is an error naming the file, document, object and field (as
    /// `kubectl --validate=strict`).
    #[default]
    Strict,
    /// Each unknown field is a warning and is then ignored (files from a newer Kubernetes).
    Warn,
    /// Unknown fields are ignored without a word.
    Ignore,
}

/// An inventory read from files, with what the reader should be told.
#[derive(Debug, Clone, Default)]
pub struct LoadedInventory {
    /// The inventory.
    pub inventory: Inventory,
    /// One line each, naming file, document and object: unknown fields (with
    /// [`Validation::Warn`]), namespaced objects without `metadata.namespace` (taken as
    /// `default`).
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Reads a file or a directory of YAML/JSON files holding Kubernetes objects, like
    /// [`Inventory::from_path`], with unknown fields handled as `validation` says; the
    /// warnings are returned for the caller to show.
    pub fn load(path: &Path, validation: Validation) -> Result<LoadedInventory, InventoryError> {
        let mut objects = Vec::new();
        let mut warnings = Vec::new();
        for file in files_under(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| InventoryError::Io {
                path: file.clone(),
                source,
            })?;
            objects.extend(parse_sourced(&text, &file, validation, &mut warnings)?);
        }
        Ok(LoadedInventory {
            inventory: build::from_sourced(objects)?,
            warnings,
        })
    }
}

/// Reads every object under `path` and builds the inventory: strict, the warnings logged.
pub(super) fn from_path(path: &Path) -> Result<Inventory, InventoryError> {
    let loaded = Inventory::load(path, Validation::Strict)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.inventory)
}

/// The files a path names: itself, or the YAML/JSON files under a directory, sorted.
pub(super) fn files_under(path: &Path) -> Result<Vec<PathBuf>, InventoryError> {
    let meta = std::fs::metadata(path).map_err(|source| InventoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| InventoryError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| InventoryError::Io {
                path: dir.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses YAML text into objects (without building an inventory): strict, the warnings logged.
pub(super) fn parse_yaml(text: &str, path: &Path) -> Result<Vec<KubeObject>, InventoryError> {
    let mut warnings = Vec::new();
    let objects = parse_sourced(text, path, Validation::Strict, &mut warnings)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(objects.into_iter().map(|(_, o)| o).collect())
}

/// The keys a `List` may have besides its items' own.
const LIST_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "items"];

/// Parses YAML text into objects, each with the place it came from; unknown fields as
/// `validation` says, warnings appended to `warnings`.
pub(super) fn parse_sourced(
    text: &str,
    path: &Path,
    validation: Validation,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, KubeObject)>, InventoryError> {
    yaml::check_nesting(text).map_err(|too_deep| InventoryError::TooDeep {
        path: path.to_owned(),
        too_deep,
    })?;
    let mut out = Vec::new();
    let mut decode =
        |value: Value, origin: String, warnings: &mut Vec<String>| -> Result<(), InventoryError> {
            let (obj, unknown) = KubeObject::from_value_checked(value, validation)
                .and_then(|(o, unknown)| o.check_names().map(|()| (o, unknown)))
                .map_err(|e| e.with_origin(&origin))?;
            let (kind, meta) = obj.kind_and_meta();
            let name = meta.name.as_deref().unwrap_or("<unnamed>");
            let object = match meta.namespace.as_deref() {
                Some(ns) => format!("{kind} {ns}/{name}"),
                None => format!("{kind} {name}"),
            };
            for field in unknown {
                warnings.push(format!("{origin}{object}: unknown field {field} (ignored)"));
            }
            if obj.is_namespaced() && meta.namespace.is_none() {
                warnings.push(format!(
                    "{origin}{object}: no metadata.namespace, taken as \"default\""
                ));
            }
            out.push((origin, obj));
            Ok(())
        };
    let documents = yaml::documents::<Value>(text).map_err(|e| InventoryError::Yaml {
        path: path.to_owned(),
        document: e.document,
        source: e.error,
    })?;
    for yaml::Document {
        number: document,
        value,
    } in documents
    {
        let origin = format!("{}, document {document}: ", path.display());
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
            let unknown: Vec<String> = match &value {
                Value::Mapping(entries) => entries
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| !LIST_FIELDS.contains(&k.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            match validation {
                Validation::Strict if !unknown.is_empty() => {
                    return Err(InventoryError::UnknownFields {
                        origin,
                        object: kind.to_owned(),
                        fields: unknown,
                    });
                }
                Validation::Warn => warnings.extend(
                    unknown
                        .iter()
                        .map(|f| format!("{origin}{kind}: unknown field {f} (ignored)")),
                ),
                Validation::Strict | Validation::Ignore => {}
            }
            let items = match value.get("items") {
                None | Some(Value::Null) => continue,
                Some(Value::Sequence(items)) => items.clone(),
                Some(_) => {
                    return Err(InventoryError::Invalid {
                        origin,
                        object: kind.to_owned(),
                        field: "items".into(),
                        problem: "expected a list of objects".into(),
                    });
                }
            };
            // `kubectl get pods -o yaml` prints a `List`; a typed `PodList` omits items' kind.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, mut item) in items.into_iter().enumerate() {
                if let (Some(k), Value::Mapping(m)) = (item_kind, &mut item)
                    && !m.iter().any(|(key, _)| key == "kind")
                {
                    m.push(("kind".into(), Value::String(k.into())));
                }
                let origin = format!("{}, document {document}, items[{i}]: ", path.display());
                decode(item, origin, warnings)?;
            }
        } else {
            decode(value, origin, warnings)?;
        }
    }
    Ok(out)
}

impl InventoryError {
    /// Sets the origin of an `Invalid`/`Policy` error (no-op for others).
    pub(super) fn with_origin(self, new: &str) -> Self {
        match self {
            InventoryError::Invalid {
                object,
                field,
                problem,
                ..
            } => InventoryError::Invalid {
                origin: new.to_owned(),
                object,
                field,
                problem,
            },
            InventoryError::Policy { source, .. } => InventoryError::Policy {
                origin: new.to_owned(),
                source,
            },
            InventoryError::UnknownFields { object, fields, .. } => InventoryError::UnknownFields {
                origin: new.to_owned(),
                object,
                fields,
            },
            other => other,
        }
    }
}
