//! Flow records: the contract type and JSON-lines I/O.

pub mod jsonl;
mod record;
pub mod table;

pub use record::{
    Directional, Drops, Endpoint, FlowNameError, FlowRecord, FlowState, Protocol, ServiceRef,
    Unenforced, UnknownProtocol, WorkloadRef,
};
