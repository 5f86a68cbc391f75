//! ipBlocks pre-computed as an interval map over addresses: every distinct `ipBlock` (a CIDR
//! minus its `except` CIDRs) of the compiled policies is cut out of the IPv4 and IPv6 address
//! spaces once, at compile time, so that the blocks containing an address are known from one
//! binary search over the boundaries instead of testing each block.
//!
//! A *region* is a set of addresses contained in exactly the same blocks; regions are
//! interned (region 0 is "in no block"), so that the rule tables can say per region which
//! peer conditions an address there satisfies.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

/// An `ipBlock`: the CIDR and its `except` CIDRs.
pub(crate) type Block = (IpNet, Box<[IpNet]>);

/// The interval map from addresses to regions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Regions {
    /// IPv4: interval starts (ascending, the first is 0) and the region of each interval.
    v4_starts: Box<[u32]>,
    v4_ids: Box<[u32]>,
    /// IPv6: the same.
    v6_starts: Box<[u128]>,
    v6_ids: Box<[u32]>,
    /// Per region, the blocks (indices into the `blocks` given to [`Regions::build`])
    /// containing it, ascending.
    members: Vec<Box<[u32]>>,
}

/// An inclusive address range, as integers of its family.
type Range = (u128, u128);

/// The inclusive address range of a network.
fn range(net: &IpNet) -> Range {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl Regions {
    /// Cuts the address spaces at every boundary of `blocks`.
    pub(crate) fn build(blocks: &[Block]) -> Regions {
        let mut ids: HashMap<Box<[u32]>, u32> = HashMap::new();
        let mut members: Vec<Box<[u32]>> = Vec::new();
        // Region 0: in no block.
        ids.insert(Box::new([]), 0);
        members.push(Box::new([]));
        let (v4_starts, v4_ids) =
            Self::family(blocks, true, u128::from(u32::MAX), &mut ids, &mut members);
        let (v6_starts, v6_ids) = Self::family(blocks, false, u128::MAX, &mut ids, &mut members);
        Regions {
            v4_starts: v4_starts
                .into_iter()
                .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
                .collect(),
            v4_ids: v4_ids.into_boxed_slice(),
            v6_starts: v6_starts.into_boxed_slice(),
            v6_ids: v6_ids.into_boxed_slice(),
            members,
        }
    }

    /// The intervals of one address family (`max` is its last address).
    fn family(
        blocks: &[Block],
        v4: bool,
        max: u128,
        ids: &mut HashMap<Box<[u32]>, u32>,
        members: &mut Vec<Box<[u32]>>,
    ) -> (Vec<u128>, Vec<u32>) {
        // (block index, cidr range, except ranges) of this family.
        let ranges: Vec<(u32, Range, Vec<Range>)> = blocks
            .iter()
            .enumerate()
            .filter(|(_, (cidr, _))| matches!(cidr, IpNet::V4(_)) == v4)
            .map(|(i, (cidr, except))| {
                (
                    u32::try_from(i).unwrap_or(u32::MAX),
                    range(cidr),
                    except.iter().map(range).collect(),
                )
            })
            .collect();
        let mut bounds: Vec<u128> = vec![0];
        for (_, cidr, except) in &ranges {
            for (lo, hi) in std::iter::once(cidr).chain(except) {
                bounds.push(*lo);
                if *hi < max {
                    bounds.push(hi + 1);
                }
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut starts = Vec::with_capacity(bounds.len());
        let mut out: Vec<u32> = Vec::with_capacity(bounds.len());
        let inside = |x: u128, (lo, hi): (u128, u128)| lo <= x && x <= hi;
        for s in bounds {
            // Every address of the interval starting at `s` is in the same blocks as `s`.
            let set: Box<[u32]> = ranges
                .iter()
                .filter(|(_, cidr, except)| {
                    inside(s, *cidr) && !except.iter().any(|e| inside(s, *e))
                })
                .map(|(i, _, _)| *i)
                .collect();
            let next = u32::try_from(members.len()).unwrap_or(u32::MAX);
            let id = *ids.entry(set.clone()).or_insert_with(|| {
                members.push(set);
                next
            });
            if out.last() != Some(&id) {
                starts.push(s);
                out.push(id);
            }
        }
        (starts, out)
    }

    /// Number of regions.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// The blocks containing region `r`.
    pub(crate) fn members(&self, r: usize) -> &[u32] {
        self.members.get(r).map_or(&[], |m| m)
    }

    /// The region of an address.
    #[inline]
    pub(crate) fn region(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                let at = self.v4_starts.partition_point(|s| *s <= x);
                at.checked_sub(1)
                    .and_then(|i| self.v4_ids.get(i))
                    .copied()
                    .unwrap_or(0)
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                let at = self.v6_starts.partition_point(|s| *s <= x);
                at.checked_sub(1)
                    .and_then(|i| self.v6_ids.get(i))
                    .copied()
                    .unwrap_or(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::synth::Rng;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn block(cidr: &str, except: &[&str]) -> Block {
        (net(cidr), except.iter().map(|e| net(e)).collect())
    }

    /// The blocks containing `ip`, tested literally.
    fn literal(blocks: &[Block], ip: IpAddr) -> Vec<u32> {
        blocks
            .iter()
            .enumerate()
            .filter(|(_, (cidr, except))| {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            })
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// The interval map gives, for every address, exactly the blocks that contain it: at and
    /// around every boundary, at the ends of both address spaces, and at random addresses.
    #[test]
    fn regions_agree_with_literal_block_tests() {
        let blocks = vec![
            block("10.128.0.0/12", &["10.128.1.0/24"]),
            block("10.128.0.0/12", &["10.128.2.0/24"]),
            block("0.0.0.0/0", &["10.0.0.0/8"]),
            block("10.0.0.0/8", &["10.1.0.0/16", "10.1.2.0/24"]),
            block("255.255.255.255/32", &[]),
            block("192.168.0.1/32", &[]),
            block("::/0", &["fd00::/8"]),
            block("fd00::/8", &["fd00:1::/32"]),
            block("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120", &[]),
        ];
        let regions = Regions::build(&blocks);
        assert_eq!(
            regions.region("1.2.3.4".parse().unwrap()),
            regions.region("8.8.8.8".parse().unwrap())
        );
        let mut probes: Vec<IpAddr> = Vec::new();
        for (cidr, except) in &blocks {
            for n in std::iter::once(cidr).chain(except.iter()) {
                let (lo, hi) = range(n);
                for x in [
                    lo.wrapping_sub(1),
                    lo,
                    lo + 1,
                    hi.wrapping_sub(1),
                    hi,
                    hi.wrapping_add(1),
                ] {
                    probes.push(match n {
                        IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(x as u32)),
                        IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(x)),
                    });
                }
            }
        }
        let mut rng = Rng::new(7);
        for _ in 0..20_000 {
            let v = rng.next_u64();
            probes.push(IpAddr::from(std::net::Ipv4Addr::from(v as u32)));
            probes.push(IpAddr::from([
                10,
                128 + (v % 4) as u8,
                (v >> 8) as u8,
                (v >> 16) as u8,
            ]));
            let hi = u128::from(rng.next_u64()) << 64 | u128::from(v);
            probes.push(IpAddr::from(std::net::Ipv6Addr::from(hi)));
            probes.push(IpAddr::from(std::net::Ipv6Addr::from(
                (0xfd00_u128 << 112) | (u128::from(v % 3) << 96) | hi >> 40,
            )));
        }
        for ip in probes {
            let r = regions.region(ip) as usize;
            assert_eq!(regions.members(r), literal(&blocks, ip).as_slice(), "{ip}");
        }
        // Regions are interned: far fewer than intervals, region 0 is "in no block".
        assert!(regions.len() < 20, "{}", regions.len());
        assert!(regions.members(0).is_empty());
        assert_eq!(
            regions.region("fd00::1".parse().unwrap()) as usize,
            regions.region("fd00::2".parse().unwrap()) as usize
        );
    }

    #[test]
    fn no_blocks_is_one_region() {
        let regions = Regions::build(&[]);
        assert_eq!(regions.len(), 1);
        assert_eq!(regions.region("10.0.0.1".parse().unwrap()), 0);
        assert_eq!(regions.region("::1".parse().unwrap()), 0);
    }
}
