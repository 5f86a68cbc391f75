//! Services: ClusterIP:port → backend pod:targetPort with nftables DNAT, the way kube-proxy's
//! nftables mode does it (`numgen random mod N` over the endpoints, reject when there is none,
//! masquerade only for hairpin traffic: a pod reaching itself through its service).
//!
//! The rules live in their own table, [`TABLE`], in the node's namespace.

use std::fmt::Write;

use super::model::{LabModel, protocol_name};

/// The nftables table holding the service rules (family `ip`).
pub const TABLE: &str = "npo_lab_svc";

/// The nftables script implementing every Service of `model`.
pub fn compile(model: &LabModel) -> String {
    let mut rules = String::new();
    let mut hairpin = String::new();
    for svc in &model.services {
        for sp in &svc.ports {
            let proto = protocol_name(sp.protocol).to_lowercase();
            let targets: Vec<String> = svc
                .backends
                .iter()
                .filter_map(|&b| {
                    let pod = &model.pods[b];
                    sp.target_on(pod).map(|port| format!("{} . {port}", pod.ip))
                })
                .collect();
            let matcher = format!("ip daddr {} {proto} dport {}", svc.cluster_ip, sp.port);
            let comment = format!("comment \"{}/{}:{}\"", svc.namespace, svc.name, sp.port);
            let _ = match targets.len() {
                0 => writeln!(rules, "    {matcher} reject {comment}"),
                1 => writeln!(
                    rules,
                    "    {matcher} dnat to {} {comment}",
                    targets[0].replace(" . ", ":")
                ),
                n => {
                    let map: Vec<String> = targets
                        .iter()
                        .enumerate()
                        .map(|(i, t)| format!("{i} : {t}"))
                        .collect();
                    writeln!(
                        rules,
                        "    {matcher} dnat to numgen random mod {n} map {{ {} }} {comment}",
                        map.join(", ")
                    )
                }
            };
        }
    }
    for pod in &model.pods {
        let _ = writeln!(
            hairpin,
            "    ct status dnat ip saddr {0} ip daddr {0} masquerade",
            pod.ip
        );
    }
    format!(
        "table ip {TABLE} {{
  chain services {{
{rules}  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
{hairpin}  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::lab::scenario::parse;

    #[test]
    fn dnat_per_service_port_with_named_targets() {
        let text = "name: t
namespaces: [{name: a}]
workloads:
  - {namespace: a, name: api, replicas: 2, labels: {app: api}, ports: [{name: api, port: 9000}]}
services:
  - {namespace: a, name: api, selector: {app: api}, ports: [{port: 80, targetPort: api}]}
  - {namespace: a, name: none, selector: {app: x}, ports: [{port: 81}]}
";
        let s = parse(Path::new("t"), text).unwrap();
        let m = LabModel::build(Path::new("t"), text, &s).unwrap();
        let script = compile(&m);
        assert!(script.contains(
            "ip daddr 10.96.0.20 tcp dport 80 dnat to numgen random mod 2 map { 0 : 10.244.0.11 . 9000, 1 : 10.244.0.12 . 9000 }"
        ), "{script}");
        assert!(
            script.contains("ip daddr 10.96.0.10 udp dport 53 dnat to 10.244.0.10:53"),
            "{script}"
        );
        assert!(
            script.contains("ip daddr 10.96.0.21 tcp dport 81 reject"),
            "{script}"
        );
    }
}
