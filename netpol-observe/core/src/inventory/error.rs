//! The inventory's error type: every error names where (file, document), what (object) and
//! which field.

use std::{io, path::PathBuf};

/// Why an inventory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file nests too deeply to be parsed.
    #[error("{path}: {too_deep}")]
    TooDeep {
        /// The file.
        path: PathBuf,
        /// Where (in the message, not a source: it is the whole cause).
        too_deep: crate::yaml::TooDeep,
    },
    /// A document is not valid YAML/JSON.
    #[error("{path}: document {document}: invalid YAML")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based document number in the file.
        document: usize,
        /// What the YAML parser said (with line and column in the file).
        #[source]
        source: crate::yaml::Error,
    },
    /// An object is not a valid Kubernetes object of a kind the inventory knows, or one of its
    /// fields is invalid.
    #[error("{origin}{object}: field {field}: {problem}")]
    Invalid {
        /// Where the object came from (`file, document N: `), empty for in-memory objects.
        origin: String,
        /// The object, as `Kind namespace/name`.
        object: String,
        /// Field path, e.g. `status.podIPs[0].ip`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// An object has fields its Kubernetes type does not know (a typo such as
    /// `spec.podSelectr`, or a field of a newer Kubernetes), with strict validation.
    #[error("{origin}{object}: {}", unknown_fields(.fields))]
    UnknownFields {
        /// Where the object came from (`file, document N: `), empty for in-memory objects.
        origin: String,
        /// The object, as `Kind namespace/name`.
        object: String,
        /// Every unknown field, as a path (`spec.ingress[0].fromm`).
        fields: Vec<String>,
    },
    /// A NetworkPolicy is invalid (bad selector, operator, CIDR, port...).
    #[error("{origin}{source}")]
    Policy {
        /// Where the policy came from (`file, document N: `), empty for in-memory objects.
        origin: String,
        /// The policy error, naming the policy and the field.
        #[source]
        source: crate::rules::PolicyError,
    },
}

/// `unknown field a` / `unknown fields a, b, c` (at most 10 named, then how many more).
fn unknown_fields(fields: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = String::from(if fields.len() == 1 {
        "unknown field "
    } else {
        "unknown fields "
    });
    s.push_str(
        &fields
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    );
    if fields.len() > SHOWN {
        s.push_str(&format!(" and {} more", fields.len() - SHOWN));
    }
    s
}
