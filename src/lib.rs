//! promo-attribution: credits orders to the partners whose promo codes and clicks drove them,
//! following impact.com's Tracking Promo Codes rules, and flags code misuse as it happens.
//!
//! # Layout
//!
//! The decision core is pure — no Kafka, no Redis, no clock — and is what every mode shares:
//! - [`schema`]: the order read in, the conversion and alert written out.
//! - [`codes`]: the code table, its CSV format and validation.
//! - [`matcher`]: exact and regex indexes that find an entered code's entry.
//! - [`attribution`]: the crediting rules and per-order alerts.
//! - [`detectors`]: the stateful misuse detectors, their state behind a trait.
//! - [`reversals`]: refunds and cancellations as adjustments of the original decision.
//! - [`settings`], [`timefmt`], [`ids`]: configuration, date reading, deterministic ids.
//!
//! [`engine`] turns input records into output records with that core (parse, decide, detect,
//! serialize, size check); the worker, the offline mode and the benches all run it.
//!
//! At the edges, each in the module named after it:
//! - [`kafka`]: poll, produce, commit and rewind, on the worker's own thread.
//! - [`redis`]: the code store, the live code sync, the detectors' shared state.
//! - [`admin`], [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`offline`]: the engine over files (`attribute`), and [`explain`] for people.
//! - [`replay`]: re-decide and audit a range of the input topic; [`dlq`]: send dead letters back.
//! - [`report`]: performance by promo code from conversion records (`report`).
//! - [`table_source`]: the seam the worker reads the current code table through.
//! - [`backoff`]: exponential backoff with jitter for every retry loop.
//! - [`telemetry`]: the log output (text or flat JSON, colour only on a terminal).
//! - [`run`]: wiring of the worker; [`supervise`]: no thread dies silently; [`cli`]: the command
//!   line; `src/main.rs` only calls it.
//! - [`faults`]: faults a test injects into a worker (debug builds only).

pub mod admin;
pub mod attribution;
pub mod backoff;
pub mod cli;
pub mod codes;
pub mod codes_cli;
pub mod detectors;
pub mod dlq;
pub mod engine;
pub mod explain;
pub mod faults;
pub mod healthcheck;
pub mod hugepages;
pub mod ids;
pub mod kafka;
pub mod matcher;
pub mod metrics;
pub mod offline;
pub mod redis;
pub mod repeated;
pub mod replay;
pub mod report;
pub mod reversals;
pub mod run;
pub mod schema;
pub mod settings;
pub mod supervise;
pub mod table_source;
pub mod telemetry;
pub mod timefmt;
