//! Kubernetes name rules, for names that come from input (flow records, agents' answers,
//! inventory files, subnets files) before they reach a file name, a label or an object.
//!
//! The rules are the API server's (`k8s.io/apimachinery/pkg/util/validation`):
//! - a **DNS-1123 label** (namespaces, Services): 1-63 of `[a-z0-9-]`, starting and ending
//!   with an alphanumeric;
//! - a **DNS-1123 subdomain** (most object names, nodes): at most 253 characters, dot-separated
//!   DNS-1123 labels;
//! - a **label key** (qualified name): an optional DNS-1123 subdomain prefix and `/`, then a
//!   name of 1-63 alphanumerics, `-`, `_` or `.`, starting and ending with an alphanumeric;
//! - a **label value**: empty, or like a key's name part;
//! - a **port name** (`IANA_SVC_NAME`): 1-15 of `[a-z0-9-]`, at least one letter, no leading,
//!   trailing or double `-`.
//!
//! A name that passes [`check_dns_label`] holds no `/`, `.` or other path syntax, so it is safe
//! as a file name stem.

use std::fmt;

/// What a name is, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A namespace name (DNS-1123 label).
    Namespace,
    /// A Service name (DNS-1123 label).
    Service,
    /// An object name: pod, workload, node, policy (DNS-1123 subdomain).
    Object,
    /// A label key (qualified name).
    LabelKey,
    /// A label value.
    LabelValue,
    /// An object kind (`Deployment`).
    Kind,
    /// A container or Service port name (`IANA_SVC_NAME`).
    PortName,
    /// The name of a subnet outside the cluster (label-value syntax, not empty).
    Subnet,
}

impl NameKind {
    /// The rule the name must follow, in words.
    pub fn rule(self) -> &'static str {
        match self {
            NameKind::Namespace | NameKind::Service => {
                "a DNS-1123 label: 1-63 lower case letters, digits or '-', starting and ending with a letter or digit"
            }
            NameKind::Object => {
                "a DNS-1123 subdomain: at most 253 characters, dot-separated parts of lower case letters, digits or '-', each starting and ending with a letter or digit"
            }
            NameKind::LabelKey => {
                "an optional DNS-1123 subdomain prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            }
            NameKind::LabelValue => {
                "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            }
            NameKind::Kind => "1-63 letters or digits, starting with a letter",
            NameKind::PortName => {
                "an IANA service name: 1-15 lower case letters, digits or '-', with at least one letter, no leading, trailing or double '-'"
            }
            NameKind::Subnet => {
                "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            }
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Namespace => "namespace name",
            NameKind::Service => "Service name",
            NameKind::Object => "object name",
            NameKind::LabelKey => "label key",
            NameKind::LabelValue => "label value",
            NameKind::Kind => "kind",
            NameKind::PortName => "port name",
            NameKind::Subnet => "subnet name",
        })
    }
}

/// A name that breaks the Kubernetes rules for its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a valid {kind} (expected {})", Shown(.value), .kind.rule())]
pub struct NameError {
    /// What the name is.
    pub kind: NameKind,
    /// The offending name.
    pub value: String,
}

/// A value as it is shown in messages: quoted and escaped, cut after 80 characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 80;
        match self.0.char_indices().nth(MAX) {
            Some((cut, _)) => write!(
                f,
                "{:?}… ({} bytes)",
                self.0.get(..cut).unwrap_or_default(),
                self.0.len()
            ),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(is_dns_label)
}

/// A label value or a label key's name part (which must not be empty): at most 63
/// alphanumerics, `-`, `_` or `.`, beginning and ending with an alphanumeric.
pub(crate) fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_name(name)
}

fn is_kind(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
}

/// A valid IANA service name (a named port): 1-15 lowercase alphanumerics and `-`, at least
/// one letter, no leading, trailing or double `-`.
pub(crate) fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Checks `value` against the rule of `kind`.
pub fn check(kind: NameKind, value: &str) -> Result<(), NameError> {
    let ok = match kind {
        NameKind::Namespace | NameKind::Service => is_dns_label(value),
        NameKind::Object => is_dns_subdomain(value),
        NameKind::LabelKey => is_label_key(value),
        NameKind::LabelValue => is_label_name(value),
        NameKind::Kind => is_kind(value),
        NameKind::PortName => is_port_name(value),
        NameKind::Subnet => !value.is_empty() && is_label_name(value),
    };
    if ok {
        Ok(())
    } else {
        Err(NameError {
            kind,
            value: value.to_owned(),
        })
    }
}

/// A namespace name (DNS-1123 label): safe as a file name stem.
pub fn check_namespace(value: &str) -> Result<(), NameError> {
    check(NameKind::Namespace, value)
}

/// An object name (DNS-1123 subdomain).
pub fn check_object(value: &str) -> Result<(), NameError> {
    check(NameKind::Object, value)
}

/// Every key and value of a label map; the error names the offending key (`Err((key,
/// error))`).
pub fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), (String, NameError)> {
    for (k, v) in labels {
        check(NameKind::LabelKey, k).map_err(|e| (k.clone(), e))?;
        check(NameKind::LabelValue, v).map_err(|e| (k.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        for ok in ["shop", "a", "kube-system", "a1-b2", &"x".repeat(63)] {
            assert!(check_namespace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../../../var/x/escaped",
            "..",
            ".",
            "a/b",
            "Shop",
            "Shop Space",
            "Bad_Name!",
            "-a",
            "a-",
            "a.b",
            &"x".repeat(64),
            "a\u{0}",
            "é",
        ] {
            let err = check_namespace(bad).unwrap_err();
            assert_eq!(err.kind, NameKind::Namespace);
            assert!(err.to_string().contains("DNS-1123 label"), "{err}");
        }
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        let longest = [&"a".repeat(63); 3].map(String::as_str).join(".") + "." + &"b".repeat(61);
        assert_eq!(longest.len(), 253);
        for ok in ["web-7d9c-x2", "node-1.example.com", &longest] {
            assert!(check_object(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "Web",
            "a/b",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(check_object(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-D", "k8s.io/x"] {
            assert!(check(NameKind::LabelKey, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-bad key",
            "a b",
            "/x",
            "x/",
            "Bad.Prefix/x",
            "a/b/c",
            "_a",
        ] {
            assert!(check(NameKind::LabelKey, bad).is_err(), "{bad}");
        }
        for ok in ["", "web", "v1.2_3-x"] {
            assert!(check(NameKind::LabelValue, ok).is_ok(), "{ok}");
        }
        for bad in ["a b", "-x", "x-", "a/b", &"v".repeat(64)] {
            assert!(check(NameKind::LabelValue, bad).is_err(), "{bad}");
        }
        let labels: std::collections::BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("-bad key".to_owned(), "v".to_owned()),
        ]
        .into();
        let (key, err) = check_labels(&labels).unwrap_err();
        assert_eq!(key, "-bad key");
        assert_eq!(err.kind, NameKind::LabelKey);
    }

    #[test]
    fn kinds_ports_and_subnets() {
        assert!(check(NameKind::Kind, "Deployment").is_ok());
        assert!(check(NameKind::Kind, "Deploy ment").is_err());
        assert!(check(NameKind::Kind, "1x").is_err());
        for ok in ["http", "dns-tcp", "h2c", "a1"] {
            assert!(check(NameKind::PortName, ok).is_ok(), "{ok}");
        }
        for bad in ["", "80", "Http", "a--b", "-a", "abcdefghijklmnop", "a b"] {
            assert!(check(NameKind::PortName, bad).is_err(), "{bad}");
        }
        for ok in ["db-subnet", "world", "Key_Vault.1"] {
            assert!(check(NameKind::Subnet, ok).is_ok(), "{ok}");
        }
        for bad in ["", "db subnet", "../x", "a\nb"] {
            assert!(check(NameKind::Subnet, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let err = check_namespace(&"A".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 400, "{err}");
        assert!(err.contains("(10000 bytes)"), "{err}");
    }
}
