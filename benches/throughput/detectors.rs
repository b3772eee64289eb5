//! Detectors on and off: two worker drains (exactly-once) of one backlog whose orders carry the
//! customer, email, device and IP fields the stateful detectors read, the second with
//! `detectors.enabled=true` against the run's Redis. Same shape of identities as
//! `benches/detectors.rs`: 5,000 customers, 4,000 devices, 3,000 IPs.

use serde_json::{Value, json};

use super::support::Rng;

/// A key for the detectors' HMAC of customer identifiers: any 16+ bytes will do for a bench.
const HMAC_KEY: &str = "bench-suite-detector-key-0123456789";

/// The Redis the detectors keep their state in: BENCH_REDIS_URL (scripts/bench sets it to the
/// run's private Redis), else the shared services' one; None skips the pair.
pub fn redis_url() -> Option<String> {
    std::env::var("BENCH_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            std::env::var("BENCH_BROKERS")
                .is_err()
                .then(|| super::services_env("PROMO_REDIS_URL"))
                .flatten()
        })
}

/// The pid of that Redis (BENCH_REDIS_PID), so its CPU is counted with the detectors'.
pub fn redis_pid() -> Option<u32> {
    std::env::var("BENCH_REDIS_PID")
        .ok()
        .and_then(|p| p.trim().parse().ok())
}

/// The worker settings that turn the detectors on, with their state under `prefix`.
pub fn worker_sets(url: &str, prefix: &str) -> Vec<String> {
    vec![
        "detectors.enabled=true".into(),
        format!("detectors.customer_hmac_key={HMAC_KEY}"),
        format!("store.redis_url={url}"),
        format!("store.key_prefix={prefix}"),
    ]
}

/// The suite's orders with customer and risk identifiers added.
pub fn corpus(orders: &[String], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    orders
        .iter()
        .map(|line| {
            let mut order: Value = serde_json::from_str(line).expect("corpus order is JSON");
            let customer = rng.below(5_000);
            order["customer"] = json!({
                "id": format!("cust-{customer}"),
                "email_sha256": format!("{:064x}", customer * 7919),
            });
            order["risk"] = json!({
                "device_hash": format!("dev-{}", rng.below(4_000)),
                "ip_hash": format!("ip-{}", rng.below(3_000)),
            });
            serde_json::to_vec(&order).expect("serializes")
        })
        .collect()
}
