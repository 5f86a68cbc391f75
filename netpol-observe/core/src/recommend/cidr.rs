//! Address aggregation for `ipBlock`s: covering prefixes within a bound, and the "whole
//! Internet except the cluster" block for peers with many public addresses.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The private and special-purpose IPv4 ranges always excluded from a `0.0.0.0/0` block:
/// RFC 1918, shared address space (RFC 6598) and link-local.
pub(crate) const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

/// The private and link-local IPv6 ranges always excluded from a `::/0` block.
pub(crate) const PRIVATE_V6: &[&str] = &["fc00::/7", "fe80::/10"];

/// Covering prefixes of `addrs`: addresses sharing a prefix of length `bound_v4` (IPv4) or
/// `bound_v6` (IPv6) become the longest prefix that covers all of them (never shorter than the
/// bound); an address alone in its bound stays a host prefix (`/32`, `/128`). Sorted, distinct.
pub(crate) fn aggregate(addrs: &[IpAddr], bound_v4: u8, bound_v6: u8) -> Vec<IpNet> {
    let mut sorted: Vec<IpAddr> = addrs.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let bound = if sorted[i].is_ipv4() {
            bound_v4
        } else {
            bound_v6
        };
        let group = host(sorted[i]).and_then(|h| trunc(h, bound));
        let mut j = i + 1;
        while j < sorted.len()
            && sorted[j].is_ipv4() == sorted[i].is_ipv4()
            && host(sorted[j]).and_then(|h| trunc(h, bound)) == group
        {
            j += 1;
        }
        // sorted: the covering prefix of the group is the common prefix of its ends.
        if let Some(net) = common_prefix(sorted[i], sorted[j - 1]) {
            out.push(net);
        }
        i = j;
    }
    out.sort();
    out.dedup();
    out
}

fn host(ip: IpAddr) -> Option<IpNet> {
    match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, 32).ok().map(IpNet::V4),
        IpAddr::V6(v6) => Ipv6Net::new(v6, 128).ok().map(IpNet::V6),
    }
}

fn trunc(net: IpNet, len: u8) -> Option<IpNet> {
    let len = len.min(net.max_prefix_len());
    match net {
        IpNet::V4(n) => Ipv4Net::new(n.addr(), len)
            .ok()
            .map(|n| IpNet::V4(n.trunc())),
        IpNet::V6(n) => Ipv6Net::new(n.addr(), len)
            .ok()
            .map(|n| IpNet::V6(n.trunc())),
    }
}

/// The longest prefix containing both `a` and `b` (same family), else `None`.
pub(crate) fn common_prefix(a: IpAddr, b: IpAddr) -> Option<IpNet> {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => {
            let len = (u32::from(x) ^ u32::from(y)).leading_zeros();
            Ipv4Net::new(x, u8::try_from(len).ok()?)
                .ok()
                .map(|n| IpNet::V4(n.trunc()))
        }
        (IpAddr::V6(x), IpAddr::V6(y)) => {
            let len = (u128::from(x) ^ u128::from(y)).leading_zeros();
            Ipv6Net::new(x, u8::try_from(len).ok()?)
                .ok()
                .map(|n| IpNet::V6(n.trunc()))
        }
        _ => None,
    }
}

/// The `except` list of an "everything" block of the family of `all` (`0.0.0.0/0` or `::/0`):
/// the private ranges plus the cluster ranges of that family not already covered. Sorted.
pub(crate) fn world_except(all: IpNet, cluster: &[IpNet]) -> Vec<IpNet> {
    let fixed = if all.addr().is_ipv4() {
        PRIVATE_V4
    } else {
        PRIVATE_V6
    };
    let mut out: Vec<IpNet> = fixed.iter().filter_map(|s| s.parse().ok()).collect();
    for net in cluster {
        let net = net.trunc();
        if net.addr().is_ipv4() == all.addr().is_ipv4()
            && net.prefix_len() > 0
            && !out.iter().any(|o| o.contains(&net))
        {
            out.retain(|o| !net.contains(o));
            out.push(net);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn nets(list: &[IpNet]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn aggregates_within_the_bound_only() {
        let got = aggregate(
            &ips(&["10.0.2.5", "10.0.2.9", "10.0.3.1", "192.0.2.7", "10.0.2.5"]),
            24,
            64,
        );
        assert_eq!(nets(&got), ["10.0.2.0/28", "10.0.3.1/32", "192.0.2.7/32"]);
        // A /32 bound never widens.
        let got = aggregate(&ips(&["10.0.2.5", "10.0.2.9"]), 32, 128);
        assert_eq!(nets(&got), ["10.0.2.5/32", "10.0.2.9/32"]);
    }

    #[test]
    fn ipv6_hosts_and_groups() {
        let got = aggregate(&ips(&["2001:db8::1", "2001:db8::3", "2001:db9::1"]), 24, 64);
        assert_eq!(nets(&got), ["2001:db8::/126", "2001:db9::1/128"]);
    }

    #[test]
    fn world_except_adds_uncovered_cluster_ranges() {
        let cluster: Vec<IpNet> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "198.18.0.0/15".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        let v4 = world_except("0.0.0.0/0".parse().unwrap(), &cluster);
        assert_eq!(
            nets(&v4),
            [
                "10.0.0.0/8",
                "100.64.0.0/10",
                "169.254.0.0/16",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "198.18.0.0/15"
            ]
        );
        let v6 = world_except("::/0".parse().unwrap(), &cluster);
        assert_eq!(nets(&v6), ["fc00::/7", "fe80::/10"]);
    }
}
