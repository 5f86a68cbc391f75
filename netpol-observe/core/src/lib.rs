//! The model and engine of netpol-observe: what a flow is, the cluster inventory, attribution of
//! addresses to workloads, NetworkPolicy semantics and recommendations. Pure: no sockets, no
//! kernel, no clock reads in the engine; fed by plain data (the agent, the lab and the command
//! line do the I/O). See `docs/architecture.md`.

pub mod attribution;
pub mod flow;
pub mod inventory;
pub mod names;
pub mod policy;
pub mod recommend;
pub mod report;
pub mod rules;
pub mod yaml;
