//! `recommend --format`: which policy API the recommendation is written for. The
//! recommendation itself ([`Recommendation`]) is always NetworkPolicies; the other formats are
//! renderings of the same least privilege for another API.

use super::{Recommendation, RenderError};
use crate::inventory::Inventory;

/// The policy API of `recommend`'s output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyFormat {
    /// `networking.k8s.io/v1` NetworkPolicy (every CNI that enforces policies).
    #[default]
    #[value(name = "networkpolicy")]
    NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy (Cilium): `toFQDNs` for named external peers.
    Cilium,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy next to the namespaced
    /// NetworkPolicies (Calico 3.32, Cilium 1.20, the AWS network policy agent).
    #[value(name = "clusternetworkpolicy")]
    ClusterNetworkPolicy,
}

impl PolicyFormat {
    /// The name as `--format` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyFormat::NetworkPolicy => "networkpolicy",
            PolicyFormat::Cilium => "cilium",
            PolicyFormat::ClusterNetworkPolicy => "clusternetworkpolicy",
        }
    }
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedObject {
    /// Its namespace; `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// `Kind/name`, for messages.
    pub id: String,
    /// The YAML document (without the `---` separator).
    pub yaml: String,
}

/// Why the recommendation could not be written in the requested format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The format has no renderer yet.
    #[error("--format {}: not yet supported", .0.as_str())]
    Unsupported(PolicyFormat),
    /// A NetworkPolicy could not be rendered.
    #[error(transparent)]
    NetworkPolicy(#[from] RenderError),
    /// A policy has no CiliumNetworkPolicy form.
    #[error(transparent)]
    Cilium(#[from] super::cilium::CiliumError),
    /// An object of another API could not be rendered as YAML.
    #[error("cannot render {id} as YAML")]
    Yaml {
        /// `Kind/namespace/name`.
        id: String,
        /// What the YAML writer said.
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// The recommendation's objects in `format`, in a stable order (same input, same bytes).
pub fn render_objects(
    format: PolicyFormat,
    rec: &Recommendation,
    inventory: &Inventory,
) -> Result<Vec<RenderedObject>, FormatError> {
    match format {
        PolicyFormat::NetworkPolicy => rec
            .policies
            .iter()
            .map(|p| {
                let yaml = super::render_yaml(std::slice::from_ref(p))?;
                Ok(RenderedObject {
                    namespace: p.metadata.namespace.clone(),
                    id: format!(
                        "NetworkPolicy/{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default()
                    ),
                    yaml: yaml.strip_prefix("---\n").unwrap_or(&yaml).to_owned(),
                })
            })
            .collect(),
        PolicyFormat::Cilium => super::cilium::render(rec, inventory)?
            .into_iter()
            .map(|p| {
                let id = format!(
                    "{}/{}/{}",
                    p.kind,
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                );
                let yaml = crate::yaml::to_string(&p).map_err(|source| FormatError::Yaml {
                    id: id.clone(),
                    source,
                })?;
                Ok(RenderedObject {
                    namespace: p.metadata.namespace,
                    id,
                    yaml: super::render::quote_timestamps(&yaml),
                })
            })
            .collect(),
        PolicyFormat::ClusterNetworkPolicy => {
            let mut out = Vec::new();
            for p in super::cluster_policy::render(rec, inventory) {
                let id = format!("ClusterNetworkPolicy/{}", p.name());
                let yaml = crate::yaml::to_string(&p).map_err(|source| FormatError::Yaml {
                    id: id.clone(),
                    source,
                })?;
                out.push(RenderedObject {
                    namespace: None,
                    id,
                    yaml: super::render::quote_timestamps(&yaml),
                });
            }
            out.extend(render_objects(PolicyFormat::NetworkPolicy, rec, inventory)?);
            Ok(out)
        }
    }
}

/// The objects as one multi-document YAML stream (`---` before each document).
pub fn join_stream<'o>(objects: impl IntoIterator<Item = &'o RenderedObject>) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&o.yaml);
    }
    out
}
