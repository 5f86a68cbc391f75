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

    /// Parses subnets YAML; `path` names the source in errors.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Self, AttributionError> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let map: Option<std::collections::BTreeMap<String, OneOrMany>> = serde_yaml::from_str(text)
            .map_err(|source| AttributionError::Yaml {
                path: path.to_owned(),
                source,
            })?;
        let mut entries = Vec::new();
        for (name, cidrs) in map.unwrap_or_default() {
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

/// Whether `ip` is private: RFC 1918 for IPv4, unique-local (`fc00::/7`) for IPv6.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}
