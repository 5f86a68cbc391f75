//! Benchmark harnesses: the policy engine ([`engine`]), the recommender ([`recommend`]) and the
//! agent's userspace pipeline ([`agent`]).

pub mod agent;
pub mod engine;
pub mod inventory;
pub mod recommend;
