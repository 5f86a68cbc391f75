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
            let mut targets: Vec<String> = svc
                .backends
                .iter()
                .filter_map(|&b| {
                    let pod = &model.pods[b];
                    sp.target_on(pod).map(|port| format!("{} . {port}", pod.ip))
                })
                .collect();
            // A Service without selector: its endpoints are an external's hosts.
            if let Some(e) = svc.external {
                let port = sp.target_number();
                targets.extend(
                    model.externals[e]
                        .hosts
                        .iter()
                        .map(|h| format!("{h} . {port}")),
                );
            }
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
    use crate::scenario::parse;

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

    /// A Service without selector whose endpoints are an external's hosts (the API server
    /// behind `default/kubernetes`, which gets the first address of the service CIDR).
    #[test]
    fn dnat_to_address_endpoints() {
        let text = "name: t
namespaces: [{name: a}, {name: default}]
workloads:
  - {namespace: a, name: op, labels: {app: op}, ports: [{port: 80}]}
services:
  - {namespace: default, name: kubernetes, endpoints: cp, ports: [{name: https, port: 443, targetPort: 6443}]}
  - {namespace: a, name: lb, type: LoadBalancer, selector: {app: op}, ports: [{port: 80}]}
externals:
  - {name: cp, cidr: 10.0.9.0/24, hosts: 2, ports: [{port: 6443}]}
traffic:
  - {from: a/op, to: svc/default/kubernetes, port: 443}
";
        let s = parse(Path::new("t"), text).unwrap();
        let m = LabModel::build(Path::new("t"), text, &s).unwrap();
        let script = compile(&m);
        assert!(script.contains(
            "ip daddr 10.96.0.1 tcp dport 443 dnat to numgen random mod 2 map { 0 : 10.0.9.1 . 6443, 1 : 10.0.9.2 . 6443 }"
        ), "{script}");
        let yaml = crate::inventory::to_yaml(&m).unwrap();
        let inv = netpol_observe_agent::inventory::Inventory::from_yaml_str(&yaml, "lab").unwrap();
        let svc = inv.service("default", "kubernetes").unwrap();
        let eps = inv.address_endpoints(svc).unwrap();
        assert_eq!(eps.addresses.len(), 2);
        assert_eq!(eps.port_for(443, crate::flow::Protocol::Tcp), Some(6443));
        assert_eq!(
            inv.service("a", "lb").unwrap().service_type,
            netpol_observe_agent::inventory::ServiceType::LoadBalancer
        );
        // The external must serve the target port; endpoints exclude a selector.
        for (bad, want) in [
            (text.replace("targetPort: 6443", "targetPort: 7443"), "7443"),
            (
                text.replace("endpoints: cp,", "endpoints: cp, selector: {app: op},"),
                "no selector",
            ),
            (
                text.replace("endpoints: cp,", "endpoints: nowhere,"),
                "nowhere",
            ),
        ] {
            let s = parse(Path::new("t"), &bad).unwrap();
            let err = LabModel::build(Path::new("t"), &bad, &s)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want) && err.contains("services[0]"), "{err}");
        }
    }
}
