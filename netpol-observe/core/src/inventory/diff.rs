//! What changed between two inventory snapshots when only pods did ([`PodDiff`]): what lets
//! the models built from the first be updated for just the changed pods instead of rebuilt
//! ([`crate::policy::PolicyEngine::update_pods`], [`crate::attribution::Attributor::update_pods`]).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use super::{Inventory, PodInfo};

/// How the pods of a new snapshot relate to an old one's, when nothing but pods differs.
#[derive(Debug, Clone)]
pub struct PodDiff {
    /// Per pod of the new snapshot: its index in the old one when it is unchanged.
    pub(crate) old_of_new: Vec<Option<u32>>,
    /// Per pod of the old snapshot: its index in the new one when it is unchanged.
    pub(crate) new_of_old: Vec<Option<u32>>,
    /// The namespaces of every added, changed or removed pod.
    pub(crate) touched: BTreeSet<String>,
    /// Pods added, changed or removed.
    changed: usize,
}

impl PodDiff {
    /// The diff from `old` to `new`, or `None` when anything but pods differs (namespaces,
    /// Services, EndpointSlices, Nodes, policies), when `new`'s pods are not in inventory
    /// order (namespace, name, creation), or when a pod's namespace is not a known one: those
    /// need a full build.
    pub fn between(old: &Inventory, new: &Inventory) -> Option<PodDiff> {
        if old.namespaces != new.namespaces
            || old.services != new.services
            || old.endpoint_slices != new.endpoint_slices
            || old.nodes != new.nodes
            || old.network_policies != new.network_policies
            || old.cluster_network_policies != new.cluster_network_policies
        {
            return None;
        }
        fn key(p: &PodInfo) -> (&str, &str, Option<jiff::Timestamp>) {
            (p.namespace.as_str(), p.name.as_str(), p.created)
        }
        if new.pods.windows(2).any(|w| key(&w[0]) > key(&w[1])) {
            return None;
        }
        let mut by_uid: FxHashMap<&str, u32> = FxHashMap::default();
        by_uid.reserve(old.pods.len());
        for (i, p) in old.pods.iter().enumerate() {
            by_uid.insert(p.uid.as_str(), to_u32(i));
        }
        let mut old_of_new = Vec::with_capacity(new.pods.len());
        let mut new_of_old = vec![None; old.pods.len()];
        let mut touched = BTreeSet::new();
        let mut changed = 0;
        for (i, p) in new.pods.iter().enumerate() {
            if !new.namespaces.contains_key(p.namespace.as_str()) {
                return None;
            }
            let same = by_uid
                .get(p.uid.as_str())
                .copied()
                .filter(|o| old.pods[*o as usize] == *p);
            if let Some(o) = same {
                new_of_old[o as usize] = Some(to_u32(i));
            } else {
                changed += 1;
                touched.insert(p.namespace.to_string());
            }
            old_of_new.push(same);
        }
        for (p, n) in old.pods.iter().zip(&new_of_old) {
            if n.is_none() {
                changed += 1;
                touched.insert(p.namespace.to_string());
            }
        }
        Some(PodDiff {
            old_of_new,
            new_of_old,
            touched,
            changed,
        })
    }

    /// Pods added, changed or removed (a changed pod counts twice: its old and new versions).
    pub fn changed(&self) -> usize {
        self.changed
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed == 0
    }

    /// The range of `inventory.pods` in namespace `ns` (pods are in namespace order).
    pub(crate) fn namespace_range(inventory: &Inventory, ns: &str) -> std::ops::Range<usize> {
        let lo = inventory
            .pods
            .partition_point(|p| p.namespace.as_str() < ns);
        let hi = lo + inventory.pods[lo..].partition_point(|p| p.namespace.as_str() == ns);
        lo..hi
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Address runs (see `PodTable::by_ip`): per address, a run `(start, length)` of a flat list
/// of pod indices, ascending within a run.
pub(crate) type IpRuns<T> = (FxHashMap<std::net::IpAddr, (u32, u32)>, Vec<T>);

impl PodDiff {
    /// The address runs of `new` from those of `old` (`by_ip`, `ip_pods`, indices converted
    /// by `from`/`to`): the runs of unchanged addresses are renumbered, the runs of the
    /// addresses of changed pods rebuilt at the end of the list (compacted when the list
    /// holds more stale entries than live ones).
    pub(crate) fn update_ip_runs<T: Copy>(
        &self,
        old: &Inventory,
        new: &Inventory,
        by_ip: &FxHashMap<std::net::IpAddr, (u32, u32)>,
        ip_pods: &[T],
        from: impl Fn(T) -> usize,
        to: impl Fn(usize) -> T,
    ) -> IpRuns<T> {
        let mut added: FxHashMap<std::net::IpAddr, Vec<usize>> = FxHashMap::default();
        for (o, n) in self.new_of_old.iter().enumerate() {
            if n.is_none() && !old.pods[o].host_network {
                for ip in &old.pods[o].ips {
                    added.entry(*ip).or_default();
                }
            }
        }
        for (i, o) in self.old_of_new.iter().enumerate() {
            if o.is_none() && !new.pods[i].host_network {
                for ip in &new.pods[i].ips {
                    added.entry(*ip).or_default().push(i);
                }
            }
        }
        let renumber = |i: T| {
            self.new_of_old
                .get(from(i))
                .copied()
                .flatten()
                .map(|n| n as usize)
        };
        let mut runs = by_ip.clone();
        let mut flat: Vec<T> = ip_pods
            .iter()
            .map(|i| to(renumber(*i).unwrap_or(0)))
            .collect();
        for (ip, mut run) in added {
            if let Some((start, len)) = by_ip.get(&ip) {
                let old_run = &ip_pods[*start as usize..(*start + *len) as usize];
                run.extend(old_run.iter().filter_map(|i| renumber(*i)));
            }
            run.sort_unstable();
            run.dedup();
            if run.is_empty() {
                runs.remove(&ip);
                continue;
            }
            let start = to_u32(flat.len());
            flat.extend(run.iter().map(|i| to(*i)));
            runs.insert(ip, (start, to_u32(run.len())));
        }
        if flat.len() > 2 * new.pods.len() + 1024 {
            let mut compact = Vec::with_capacity(new.pods.len());
            for (start, len) in runs.values_mut() {
                let at = to_u32(compact.len());
                compact.extend_from_slice(&flat[*start as usize..(*start + *len) as usize]);
                *start = at;
            }
            flat = compact;
        }
        (runs, flat)
    }

    /// The first backend of `svc` in [`Inventory::service_backends`] order, found within the
    /// Service's namespace when it has a selector.
    pub(crate) fn first_backend<'a>(
        inventory: &'a Inventory,
        svc: &'a super::ServiceInfo,
    ) -> Option<&'a PodInfo> {
        match &svc.selector {
            Some(sel) => inventory.pods[Self::namespace_range(inventory, &svc.namespace)]
                .iter()
                .find(|p| {
                    p.deleted.is_none()
                        && !p.ips.is_empty()
                        && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                }),
            None => inventory.service_backends(svc).first().copied(),
        }
    }

    /// Whether the Service backends of namespace `ns` may differ from the old snapshot's.
    pub(crate) fn touches(&self, ns: &str) -> bool {
        self.touched.contains(ns)
    }

    /// The new index of old pod `o` when it is unchanged.
    pub(crate) fn renumber(&self, o: usize) -> Option<usize> {
        self.new_of_old
            .get(o)
            .copied()
            .flatten()
            .map(|n| n as usize)
    }
}
