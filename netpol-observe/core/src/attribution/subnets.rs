//! Named subnets (`name: [CIDRs]`): where peers outside the cluster are named.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;

use super::AttributionError;

/// A named subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSubnet {
    /// The name (`db-subnet`).
    pub name: String,
    /// The network.
    pub net: IpNet,
}

/// Named subnets; the most specific match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subnets {
    /// Sorted by prefix length, longest first (then name).
    entries: Vec<NamedSubnet>,
}

impl Subnets {
    /// Named subnets from `(name, network)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, IpNet)>) -> Self {
        let mut entries: Vec<NamedSubnet> = entries
            .into_iter()
            .map(|(name, net)| NamedSubnet {
                name,
                net: net.trunc(),
            })
            .collect();
        entries.sort_by(|a, b| {
            b.net
                .prefix_len()
                .cmp(&a.net.prefix_len())
                .then_with(|| a.name.cmp(&b.name))
        });
        Subnets { entries }
    }

    /// Reads a subnets file: a YAML mapping `name: [CIDRs]` (a single CIDR string is accepted
    /// too). Errors name the file, the subnet and the entry.
    pub fn from_path(path: &Path) -> Result<Self, AttributionError> {
        let text = std::fs::read_to_string(path).map_err(|source| AttributionError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses subnets YAML; `path` names the source in errors. A name given twice is an error
    /// naming both places (a YAML mapping would silently keep the last).
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Self, AttributionError> {
        crate::yaml::check_nesting(text).map_err(|too_deep| AttributionError::TooDeep {
            path: path.to_owned(),
            too_deep,
        })?;
        // Every entry, a name given twice kept twice: refused below naming both lines.
        let mut options = crate::yaml::options(text);
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
        let map: Option<Entries> =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| {
                AttributionError::Yaml {
                    path: path.to_owned(),
                    source: e.into(),
                }
            })?;
        let map = map.map(|m| m.0).unwrap_or_default();
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, (name, _)) in map.iter().enumerate() {
            if let Some(first) = seen.insert(name, i) {
                let (first, second) = match top_level_lines(text, name).as_slice() {
                    [a, b, ..] => (format!("line {a}"), format!("line {b}")),
                    _ => (format!("entry {}", first + 1), format!("entry {}", i + 1)),
                };
                return Err(AttributionError::Duplicate {
                    path: path.to_owned(),
                    subnet: name.clone(),
                    first,
                    second,
                });
            }
        }
        let mut entries = Vec::new();
        for (name, cidrs) in map {
            crate::names::check(crate::names::NameKind::Subnet, &name).map_err(|source| {
                AttributionError::Name {
                    path: path.to_owned(),
                    subnet: name.clone(),
                    source,
                }
            })?;
            let list = match cidrs {
                OneOrMany::One(c) => vec![c],
                OneOrMany::Many(v) => v,
            };
            for (i, c) in list.iter().enumerate() {
                let net = c
                    .trim()
                    .parse::<IpNet>()
                    .map_err(|_| AttributionError::Cidr {
                        path: path.to_owned(),
                        subnet: name.clone(),
                        index: i,
                        value: c.clone(),
                    })?;
                entries.push((name.clone(), net));
            }
        }
        Ok(Self::new(entries))
    }

    /// The name of the most specific subnet containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.net.contains(&ip))
            .map(|e| e.name.as_str())
    }

    /// The subnets, most specific first.
    pub fn entries(&self) -> &[NamedSubnet] {
        &self.entries
    }

    /// Whether there is no subnet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A subnets file's value: one CIDR or a list.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A subnets file's entries in file order, a name given twice kept twice.
struct Entries(Vec<(String, OneOrMany)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping `name: [CIDRs]`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        de.deserialize_map(Visit)
    }
}

/// The 1-based lines of `text` where the top-level key `name` is defined (`name:`,
/// `"name":` or `'name':` at the start of a line).
fn top_level_lines(text: &str, name: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let key = line.split_once(':')?.0.trim_end();
            let key = key
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
                .unwrap_or(key);
            (!line.starts_with([' ', '\t', '#', '-']) && key == name).then_some(i + 1)
        })
        .collect()
}

/// Whether `ip` is private: RFC 1918 for IPv4, unique-local (`fc00::/7`) for IPv6.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}
