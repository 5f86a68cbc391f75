//! The lab: a simulated Kubernetes node (network namespaces as pods) driven by a scenario file.
//! `netpol-observe lab`.
//!
//! - [`scenario`]: the scenario file (DESIGN contract) and its parsing;
//! - [`model`]: validation and resolution into pods, services, hosts and probes (no I/O);
//! - [`netns`], [`topology`], [`services`], [`servers`], [`dns`]: the node on the machine;
//! - [`inventory`]: the Kubernetes objects of what was built (`inventory.yaml`);
//! - [`traffic`]: the traffic entries and forbidden probes;
//! - [`rotation`]: the rotation step of outside hosts' DNS names (their validation is
//!   `model::names`);
//! - [`enforce`]: NetworkPolicies compiled into nftables rules on the node;
//! - [`agent`]: the agent run inside the node's namespace and its HTTP API reached there;
//! - [`control_plane`]: `--apiserver`, a real etcd + kube-apiserver holding the lab's objects;
//! - [`prometheus`]: a real Prometheus scraping the agents, asked `recommend --prometheus`'s query;
//! - [`expect`]: which observed flows belong to which traffic entry or probe;
//! - [`run`]: the whole pipeline: agent, traffic, flows, recommendation, verification,
//!   enforcement, metrics.

// The core's modules under their short names, as the lab's code reads them.
use netpol_observe_agent::drift;
use netpol_observe_core::{attribution, flow, policy, recommend, report, yaml};

pub mod agent;
pub mod control_plane;
pub mod dns;
pub mod enforce;
pub mod expect;
pub mod inventory;
pub mod model;
pub mod netns;
pub mod prometheus;
pub mod rotation;
pub mod run;
pub mod scenario;
pub mod servers;
pub mod services;
pub mod topology;
pub mod traffic;
