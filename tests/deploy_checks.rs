//! Checks of the deployment files that run without a container engine or a cluster:
//!
//! - `docker-compose.yml` (against the Compose specification's types) and `deploy/Dockerfile`:
//!   they reference files that exist, the Kafka settings exactly-once needs on one node, health
//!   checks that make `up --wait` meaningful;
//! - `deploy/k8s/`: probes on the admin port, a grace period above the drain deadline, a
//!   transactional id per pod, ConfigMap and Secret references that resolve, scraping, and a KEDA
//!   ScaledObject capped at the partition count;
//! - the worker settings in compose and in the ConfigMap, with the environment each sets, are
//!   accepted by the worker binary itself (`run --check-config`);
//! - the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`);
//! - live, the compose pipeline minus Docker: the code loader's command publishes the samples to
//!   Redis, a worker with the compose worker's settings (addresses replaced) decides the sample
//!   orders, its `/metrics` passes `promtool check metrics`, and a real Prometheus (Debian's
//!   package, through `scripts/prometheus`) scraping it answers every dashboard query and every
//!   metric of the alert rules with data, and evaluates the rules without errors.
//!
//! promtool and Prometheus are installed by `scripts/prometheus` when missing; like the broker
//! and Redis, they are never a reason to skip.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod deploy;
mod support;
