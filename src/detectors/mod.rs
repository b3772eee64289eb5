//! Stateful misuse detectors (issue 5). Pure: state lives behind a trait so the offline mode
//! runs them in memory and the worker against Redis.

pub mod config;
