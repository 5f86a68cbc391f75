//! Loading Kubernetes objects from files: `List`s, multi-document YAML or single objects,
//! JSON or YAML, exactly as `kubectl get … -o yaml` prints them; a directory is read
//! recursively in name order (`*.yaml`, `*.yml`, `*.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Inventory, InventoryError, KubeObject, build};

/// Reads every object under `path` and builds the inventory.
pub(super) fn from_path(path: &Path) -> Result<Inventory, InventoryError> {
    let mut objects = Vec::new();
    for file in files_under(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| InventoryError::Io {
            path: file.clone(),
            source,
        })?;
        objects.extend(parse_sourced(&text, &file)?);
    }
    build::from_sourced(objects)
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

/// Parses YAML text into objects (without building an inventory).
pub(super) fn parse_yaml(text: &str, path: &Path) -> Result<Vec<KubeObject>, InventoryError> {
    Ok(parse_sourced(text, path)?
        .into_iter()
        .map(|(_, o)| o)
        .collect())
}

/// Parses YAML text into objects, each with the place it came from.
pub(super) fn parse_sourced(
    text: &str,
    path: &Path,
) -> Result<Vec<(String, KubeObject)>, InventoryError> {
    let mut out = Vec::new();
    for (idx, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = idx + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|source| InventoryError::Yaml {
            path: path.to_owned(),
            document,
            source,
        })?;
        if value.is_null() {
            continue;
        }
        let origin = format!("{}, document {document}: ", path.display());
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
            let items = match value.get("items") {
                None | Some(serde_yaml::Value::Null) => continue,
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
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
                if let (Some(k), serde_yaml::Value::Mapping(m)) = (item_kind, &mut item)
                    && !m.contains_key("kind")
                {
                    m.insert("kind".into(), k.into());
                }
                let origin = format!("{}, document {document}, items[{i}]: ", path.display());
                let obj = KubeObject::from_value(item)
                    .and_then(|o| o.check_names().map(|()| o))
                    .map_err(|e| e.with_origin(&origin))?;
                out.push((origin, obj));
            }
        } else {
            let obj = KubeObject::from_value(value)
                .and_then(|o| o.check_names().map(|()| o))
                .map_err(|e| e.with_origin(&origin))?;
            out.push((origin, obj));
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
            other => other,
        }
    }
}
