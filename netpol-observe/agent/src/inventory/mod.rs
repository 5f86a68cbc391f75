//! The live inventory: the core's cluster model ([`netpol_observe_core::inventory`], re-exported
//! here) kept up to date from the Kubernetes API ([`live`]) through clients built by [`kubeapi`].

pub use netpol_observe_core::inventory::*;

pub mod kubeapi;
pub mod live;
