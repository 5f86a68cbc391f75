//! Policy objects one at a time: a NetworkPolicy ([`network_policy`]) or a
//! ClusterNetworkPolicy ([`cluster`]) validated and compiled into the rules the engine
//! evaluates, and label selectors ([`selector`]). Errors name the policy and the field path.
//!
//! This sits below the inventory, which keeps only valid policies ([`validate`]), and below the
//! engine ([`crate::policy`]), which evaluates the compiled rules over a whole cluster and
//! re-exports what its users need from here.

pub mod cluster;
mod error;
pub(crate) mod network_policy;
pub(crate) mod selector;

pub use error::{PolicyError, SelectorError};
pub use network_policy::{policy_id, policy_types, validate};
pub use selector::{LabelLookup, label_selector_matches};
