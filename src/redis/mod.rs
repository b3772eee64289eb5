//! The Redis edge, in one place: the versioned code store and its `codes` operations
//! ([`store`]), the live sync that keeps a worker's table on the version in force
//! ([`code_sync`]), and the detectors' shared counts ([`detector_state`]), on one node or a Redis
//! Cluster ([`connect`]). Nothing outside this module opens a Redis connection.

pub mod code_sync;
pub mod connect;
mod decision_store;
pub mod detector_state;
mod step_args;
mod step_reply;
pub mod store;
