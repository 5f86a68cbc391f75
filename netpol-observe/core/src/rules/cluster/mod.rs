//! ClusterNetworkPolicy objects one at a time: the typed API ([`types`]) and its validation and
//! compiled form ([`compile`]), which the engine's tiers ([`crate::policy::cluster`]) evaluate.

pub(crate) mod compile;
pub mod types;

pub use compile::validate;
pub use types::{
    API_VERSION, Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec,
    ClusterNetworkPolicyStatus, EgressPeer, EgressRule, GROUP, IngressPeer, IngressRule, KIND,
    NamespacedPod, PLURAL, Port, PortRange, ProtocolMatch, ProtocolPort, Subject, Tier, VERSION,
};
