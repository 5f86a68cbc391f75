//! DNS names as evidence: the names the clients resolved to the external addresses behind an
//! egress `ipBlock` (flow records' `dst.dns_names`). NetworkPolicy output names them in the
//! [`DNS_NAMES`] annotation (the contract the agent's rotation alert reads); the Cilium output
//! writes them as `toFQDNs` ([`PolicyHints`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::flow::Protocol;

/// On a workload's policy: per egress `ipBlock` CIDR that holds named external addresses, the
/// DNS names its clients resolved to them, as a JSON object `{"<cidr>": ["name", …]}` (keys
/// and names sorted). Whole-Internet blocks (`/0`) are not listed.
pub const DNS_NAMES: &str = "netpol-observe.io/dns-names";

/// At most this many names per block: beyond, the block keeps its CIDR in other formats and
/// the evidence lists the first names (sorted), so the annotation stays bounded.
pub const MAX_NAMES_PER_BLOCK: usize = 64;

/// A port of a rule as written: protocol and port (number or name, as text); `None` for every
/// port and protocol.
pub(crate) type RulePort = Option<(Protocol, String)>;

/// The named addresses behind one `ipBlock` of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedBlock {
    /// The DNS names (lowercase, without a trailing dot), sorted.
    pub names: BTreeSet<String>,
    /// The block must stay an address block where names can replace it (`toFQDNs`): some of
    /// its observed addresses had no name, it is a named subnet (a stable range by choice), or
    /// it had more than [`MAX_NAMES_PER_BLOCK`] names.
    pub keep_cidr: bool,
}

/// What a policy's rules were made of, beyond the NetworkPolicy itself: what other formats
/// need to write the same least privilege.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyHints {
    /// Per egress (port, `ipBlock` CIDR): the named addresses behind it.
    pub egress_names: BTreeMap<(RulePort, IpNet), NamedBlock>,
    /// The ports of the workload's traffic to its own node (always allowed by NetworkPolicy,
    /// so not in its rules; Cilium needs them to its `host`).
    pub own_node_egress: BTreeSet<RulePort>,
    /// For a workload with no NetworkPolicy (its only traffic is with its own node): the
    /// selector labels a policy of another API selects it by (the key names that policy).
    pub selector: Option<BTreeMap<String, String>>,
}

impl PolicyHints {
    /// Whether there is nothing to add to the policy itself.
    pub fn is_empty(&self) -> bool {
        self.egress_names.is_empty() && self.own_node_egress.is_empty()
    }
}

/// A DNS name as written: lowercase, without the trailing dot, if it is a valid name
/// (labels of letters, digits, `-` and `_`, at most 63 bytes each, 253 in all).
pub(crate) fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// The named addresses of `addrs` (one port's) per block: for each block `(cidr, except,
/// named subnet)` not covering the whole Internet, the names of the addresses it covers, if
/// any has one. `names(ip)`: the (normalized) names of an address.
pub(crate) fn named_blocks<'n>(
    blocks: &[(IpNet, &[IpNet], bool)],
    addrs: &[IpAddr],
    names: &dyn Fn(IpAddr) -> Option<&'n BTreeSet<String>>,
) -> Vec<(IpNet, NamedBlock)> {
    let mut out = Vec::new();
    for (cidr, except, subnet) in blocks {
        if cidr.prefix_len() == 0 {
            continue;
        }
        let mut block = NamedBlock {
            keep_cidr: *subnet,
            ..NamedBlock::default()
        };
        for ip in addrs
            .iter()
            .filter(|ip| cidr.contains(*ip) && !except.iter().any(|e| e.contains(*ip)))
        {
            match names(*ip).filter(|n| !n.is_empty()) {
                Some(n) => block.names.extend(n.iter().cloned()),
                None => block.keep_cidr = true,
            }
        }
        if block.names.len() > MAX_NAMES_PER_BLOCK {
            block.names = block.names.into_iter().take(MAX_NAMES_PER_BLOCK).collect();
            block.keep_cidr = true;
        }
        if !block.names.is_empty() {
            out.push((*cidr, block));
        }
    }
    out
}

/// The [`DNS_NAMES`] annotation value for `hints`, if any block has names.
pub(crate) fn annotation(hints: &PolicyHints) -> Option<String> {
    let mut map: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for ((_, cidr), block) in &hints.egress_names {
        map.entry(cidr.to_string())
            .or_default()
            .extend(block.names.iter().map(String::as_str));
    }
    if map.is_empty() {
        return None;
    }
    serde_json::to_string(&map).ok()
}

/// Parses a [`DNS_NAMES`] annotation value: CIDR → names.
pub fn parse_annotation(value: &str) -> Result<BTreeMap<IpNet, Vec<String>>, serde_json::Error> {
    serde_json::from_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(
            normalize("API.Example.com."),
            Some("api.example.com".into())
        );
        assert_eq!(normalize("_srv._tcp.x.io"), Some("_srv._tcp.x.io".into()));
        for bad in ["", ".", "a..b", "a b.io", "x/y", &"a".repeat(64), "*.x.io"] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_per_block_are_bounded() {
        let net: IpNet = "10.0.2.0/24".parse().unwrap();
        let addrs: Vec<IpAddr> = (1..=100u8).map(|i| IpAddr::from([10, 0, 2, i])).collect();
        let names: Vec<BTreeSet<String>> = (1..=addrs.len())
            .map(|i| [format!("h{i:03}.example.com")].into())
            .collect();
        let lookup = |ip: IpAddr| addrs.iter().position(|a| *a == ip).map(|i| &names[i]);
        let out = named_blocks(&[(net, &[], false)], &addrs, &lookup);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.names.len(), MAX_NAMES_PER_BLOCK);
        assert_eq!(
            out[0].1.names.first().map(String::as_str),
            Some("h001.example.com")
        );
        assert!(out[0].1.keep_cidr);
    }

    #[test]
    fn blocks_get_the_names_of_their_addresses() {
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let b: IpAddr = "203.0.113.9".parse().unwrap();
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        let named: BTreeSet<String> = ["api.example.com".to_owned()].into();
        let names = |ip: IpAddr| (ip == a || ip == c).then_some(&named);
        let net24: IpNet = "203.0.113.0/24".parse().unwrap();
        let host_c: IpNet = "198.51.100.1/32".parse().unwrap();
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        let out = named_blocks(
            &[(net24, &[], false), (host_c, &[], false), (all, &[], false)],
            &[a, b, c],
            &names,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, net24);
        assert!(out[0].1.keep_cidr, "b has no name");
        assert_eq!(out[1].0, host_c);
        assert!(!out[1].1.keep_cidr);
        let mut hints = PolicyHints::default();
        for (cidr, block) in out {
            hints
                .egress_names
                .insert((Some((Protocol::Tcp, "443".into())), cidr), block);
        }
        let value = annotation(&hints).unwrap();
        assert_eq!(
            value,
            r#"{"198.51.100.1/32":["api.example.com"],"203.0.113.0/24":["api.example.com"]}"#
        );
        let parsed = parse_annotation(&value).unwrap();
        assert_eq!(parsed[&net24], ["api.example.com"]);
    }
}
