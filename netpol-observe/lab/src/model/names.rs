//! DNS names of the lab's outside hosts (scenario `externals[].dns`, `ttl`, `rotateTo`): their
//! validation, and which probes reach an external by name.
//!
//! An external with names is answered by the lab's DNS with its first host's address (A
//! record, the external's TTL); a traffic entry or probe whose `to` is one of the names
//! resolves it from the client pod first (real DNS packets over the veths, as the agents'
//! DNS capture sees them) and connects to the answered address. The rotation step moves the
//! names to another host of the external (see [`crate::rotation`]).

use std::net::Ipv4Addr;

use super::{ExternalModel, LabModel, PeerRef, PortModel, ProbeModel, protocol_name};
use crate::scenario::{DEFAULT_DNS_TTL, ExternalSpec, Problem, RotateTo};

/// The longest TTL a scenario may give (one day).
pub(crate) const MAX_DNS_TTL: u32 = 86_400;

/// Whether `name` is a DNS name the lab serves for an external: at least two labels of lower
/// case letters, digits and `-` (each 1–63, not starting or ending with `-`), at most 253
/// characters, no trailing dot.
fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks the DNS names and TTL of external `e` against the externals declared before it;
/// returns its TTL.
pub(crate) fn check_external(e: &ExternalSpec, earlier: &[ExternalModel]) -> Result<u32, Problem> {
    for (k, name) in e.dns.iter().enumerate() {
        if !is_host_name(name) {
            return Err(Problem::Other(format!(
                "DNS name `{name}` is not a host name (lower case labels of letters, digits and '-' separated by dots, at least two labels, no trailing dot)"
            )));
        }
        if name == "cluster.local" || name.ends_with(".cluster.local") {
            return Err(Problem::Other(format!(
                "DNS name `{name}` is inside cluster.local, the cluster's own zone"
            )));
        }
        if e.dns[..k].contains(name) || earlier.iter().any(|o| o.dns.contains(name)) {
            return Err(Problem::Duplicate {
                kind: "DNS name",
                name: name.clone(),
            });
        }
    }
    match e.ttl {
        Some(_) if e.dns.is_empty() => Err(Problem::Other(
            "`ttl` without `dns`: the TTL is that of the external's DNS names".into(),
        )),
        Some(t) if t > MAX_DNS_TTL => Err(Problem::Other(format!(
            "ttl {t} is longer than a day ({MAX_DNS_TTL} s)"
        ))),
        Some(t) => Ok(t),
        None => Ok(DEFAULT_DNS_TTL),
    }
}

/// The address (and its external) where the names of external `index` (`e` as written) move
/// in the rotation step, checked against every external of the scenario.
pub(crate) fn rotation_target(
    e: &ExternalSpec,
    index: usize,
    externals: &[ExternalModel],
) -> Result<Option<(Ipv4Addr, usize)>, Problem> {
    let Some(to) = &e.rotate_to else {
        return Ok(None);
    };
    if e.dns.is_empty() {
        return Err(Problem::Other(
            "`rotateTo` without `dns`: only DNS names rotate".into(),
        ));
    }
    let ext = &externals[index];
    match to {
        RotateTo::Host(_) if !ext.anonymous => Err(Problem::Other(
            "`rotateTo` a host of the same external needs `anonymous: true`: the policies allow a named subnet as a whole, a name moving inside it is no rotation for them (rotate to another external instead)".into(),
        )),
        RotateTo::Host(n) if *n < 2 || *n as usize > ext.hosts.len() => Err(Problem::Other(format!(
            "rotateTo {n}: the names answer host 1 until the rotation, they must move to another host (2 to {})",
            ext.hosts.len()
        ))),
        RotateTo::Host(n) => Ok(Some((ext.hosts[*n as usize - 1], index))),
        RotateTo::External(name) => {
            let Some(t) = externals.iter().position(|o| o.name == *name) else {
                return Err(Problem::UnknownExternal(name.clone()));
            };
            if t == index {
                return Err(Problem::Other(format!(
                    "rotateTo `{name}`: the external itself (give a host number to move inside it)"
                )));
            }
            let serves = |p: &PortModel| {
                externals[t]
                    .ports
                    .iter()
                    .any(|q| q.port == p.port && q.protocol == p.protocol)
            };
            if let Some(p) = ext.ports.iter().find(|p| !serves(p)) {
                return Err(Problem::UndeclaredPort {
                    target: name.clone(),
                    port: p.port.to_string(),
                    protocol: protocol_name(p.protocol),
                });
            }
            Ok(Some((externals[t].hosts[0], t)))
        }
    }
}

impl ProbeModel {
    /// The DNS name the client resolves before connecting when `to` is an external's DNS
    /// name (not its name, whose hosts are reached by address).
    pub(crate) fn dns_name<'m>(&self, model: &'m LabModel) -> Option<&'m str> {
        match self.target {
            PeerRef::External(e) => model.externals[e]
                .dns
                .iter()
                .find(|n| **n == self.to)
                .map(String::as_str),
            _ => None,
        }
    }
}

impl LabModel {
    /// The externals with a rotation step (indexes in [`LabModel::externals`]).
    pub fn rotations(&self) -> impl Iterator<Item = usize> + '_ {
        self.externals
            .iter()
            .enumerate()
            .filter(|(_, e)| e.rotate_to.is_some())
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{model::LabModel, scenario::parse};

    const BASE: &str = "name: t
namespaces:
  - {name: shop}
workloads:
  - {namespace: shop, name: api, labels: {app: api}, ports: [{port: 9000}]}
externals:
  - {name: db, cidr: 10.0.2.0/24, ports: [{port: 5432}]}
";

    fn build(extra: &str) -> Result<LabModel, String> {
        let text = format!("{BASE}{extra}");
        let s = parse(Path::new("t.yaml"), &text).map_err(|e| e.to_string())?;
        LabModel::build(Path::new("t.yaml"), &text, &s).map_err(|e| e.to_string())
    }

    #[test]
    fn names_ttl_and_rotation_resolve() {
        let m = build(
            "  - {name: payments, cidr: 198.51.100.0/24, hosts: 2, anonymous: true, ports: [{name: https, port: 443}],
     dns: [api.payments.example, pay.example], ttl: 30, rotateTo: 2}
traffic:
  - {from: shop/api, to: api.payments.example, port: https}
  - {from: shop/api, to: payments, port: 443}
",
        )
        .unwrap();
        let ext = &m.externals[1];
        assert_eq!(ext.dns, ["api.payments.example", "pay.example"]);
        assert_eq!(ext.ttl, 30);
        assert_eq!(ext.rotate_to, Some(("198.51.100.2".parse().unwrap(), 1)));
        assert_eq!(m.externals[0].ttl, super::DEFAULT_DNS_TTL);
        assert_eq!(m.externals[0].rotate_to, None);
        assert_eq!(m.rotations().collect::<Vec<_>>(), [1]);
        assert_eq!(m.probes[0].target, crate::model::PeerRef::External(1));
        assert_eq!(m.probes[0].dns_name(&m), Some("api.payments.example"));
        assert_eq!(m.probes[1].target, crate::model::PeerRef::External(1));
        assert_eq!(m.probes[1].dns_name(&m), None);
    }

    fn repo(path: &str) -> (std::path::PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    #[test]
    fn the_documented_format_and_the_shipped_scenario_parse() {
        // docs/lab.md's example uses every field: it must parse (unknown fields are errors).
        let (_, doc) = repo("docs/lab.md");
        let block = doc
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap();
        let s = parse(Path::new("docs/lab.md"), block).unwrap();
        let named = s.externals.iter().find(|e| !e.dns.is_empty()).unwrap();
        assert_eq!(named.dns, ["api.payments.example"]);
        assert_eq!(
            (named.ttl, named.rotate_to.clone()),
            (Some(5), Some(crate::scenario::RotateTo::Host(2)))
        );
        assert!(s.traffic.iter().any(|t| t.to == "api.payments.example"));
        // deploy/lab/egress.yaml: one rotation, traffic by name.
        let (path, text) = repo("deploy/lab/egress.yaml");
        let m = LabModel::build(&path, &text, &parse(&path, &text).unwrap()).unwrap();
        assert_eq!(m.rotations().count(), 1);
        let by_name: Vec<&str> = m.probes.iter().filter_map(|p| p.dns_name(&m)).collect();
        assert_eq!(
            by_name,
            [
                "api.payments.example",
                "receipts.blob.example",
                "api.payments.example"
            ]
        );
    }

    #[test]
    fn bad_names_ttls_and_rotations_name_the_entry() {
        let cases = [
            ("[Api.example]", "", "is not a host name"),
            ("[localhost]", "", "is not a host name"),
            ("[a..example]", "", "is not a host name"),
            ("[x.svc.cluster.local]", "", "inside cluster.local"),
            (
                "[a.example, a.example]",
                "",
                "duplicate DNS name `a.example`",
            ),
            ("[]", ", ttl: 5", "`ttl` without `dns`"),
            ("[a.example]", ", ttl: 90000", "longer than a day"),
            (
                "[]",
                ", rotateTo: 2, anonymous: true",
                "`rotateTo` without `dns`",
            ),
            ("[a.example]", ", rotateTo: 2", "needs `anonymous: true`"),
            (
                "[a.example]",
                ", rotateTo: 1, anonymous: true",
                "rotateTo 1",
            ),
            ("[a.example]", ", rotateTo: 3, anonymous: true", "(2 to 2)"),
            ("[a.example]", ", rotateTo: pay", "the external itself"),
            ("[a.example]", ", rotateTo: nope", "unknown external `nope`"),
            (
                "[a.example], ports: [{port: 443}]",
                ", rotateTo: db",
                "port 443/TCP is not declared by `db`",
            ),
        ];
        for (names, extra, want) in cases {
            let err = build(&format!(
                "  - {{name: pay, cidr: 198.51.100.0/24, hosts: 2, dns: {names}{extra}}}\n"
            ))
            .unwrap_err();
            assert!(err.starts_with("t.yaml:8: externals[1]: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        // To another external: its first host, declared before or after.
        let m = build(
            "  - {name: pay, cidr: 198.51.100.0/28, dns: [a.example], ports: [{port: 443}], rotateTo: pay-new}\n  - {name: pay-new, cidr: 198.51.100.16/28, ports: [{port: 443}, {port: 80}]}\n",
        )
        .unwrap();
        assert_eq!(
            m.externals[1].rotate_to,
            Some(("198.51.100.17".parse().unwrap(), 2))
        );
        // A name is unique across externals.
        let err = build(
            "  - {name: a, cidr: 198.51.100.0/24, dns: [x.example]}\n  - {name: b, cidr: 198.51.101.0/24, dns: [x.example]}\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("t.yaml:9: externals[2]: duplicate DNS name `x.example`"),
            "{err}"
        );
        // A name nobody declares is an unknown peer.
        let err = build("traffic:\n  - {from: shop/api, to: api.nowhere.example, port: 443}\n")
            .unwrap_err();
        assert!(
            err.contains("unknown external `api.nowhere.example`"),
            "{err}"
        );
    }
}
