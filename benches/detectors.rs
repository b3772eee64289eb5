//! Throughput with the detectors off and on, the real pipeline (local broker, worker, Redis) in
//! one run: each mode drains the same backlog, alternating, and the rate is taken from the first
//! committed batch to the last. Takes minutes; not part of CI. Run it with
//!
//! ```sh
//! BENCH_ORDERS=100000 cargo bench --bench detectors
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

// The allocator the worker binary uses.
#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

use std::time::{Duration, Instant};

use promo_attribution::kafka::tools;
use serde_json::{Value, json};
use support::redis::{delete_prefix, detector_sets, shared};
use support::{InProcessWorker, Names, Rng, brokers, orders};

/// Orders of the test generator with the customer, device and IP fields the detectors read:
/// a few thousand customers, so per-customer and per-actor sets hold realistic sizes.
fn corpus(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0x00de_7ec7);
    orders("BENCH", count, 5)
        .into_iter()
        .map(|record| {
            let mut order: Value = serde_json::from_slice(&record).expect("json");
            let customer = rng.below(5_000);
            order["customer"] = json!({"id": format!("cust-{customer}"), "email_sha256": format!("{:064x}", customer * 7919)});
            order["risk"] = json!({"device_hash": format!("dev-{}", rng.below(4_000)), "ip_hash": format!("ip-{}", rng.below(3_000))});
            serde_json::to_vec(&order).expect("json")
        })
        .collect()
}

/// Orders per second while draining `records` from a fresh topic.
fn drain_rate(records: &[Vec<u8>], detectors: bool) -> f64 {
    let names = Names::new(if detectors { "bench-on" } else { "bench-off" });
    names.create_topics(3);
    let produced = tools::produce_records(brokers(), &names.input, records).expect("produce");
    assert_eq!(produced, records.len());
    let mut extra: Vec<String> = vec!["admin.listen=".into()];
    let (url, prefix) = shared("bench");
    if detectors {
        extra.extend(detector_sets(&url, &prefix));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let worker = InProcessWorker::start(names.settings(&names.transactional_id, &extra));
    let committed = || worker.metric("promo_batch_size_sum") as usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, usize)> = None;
    let mut last = (Instant::now(), 0);
    while Instant::now() < deadline {
        let done = committed();
        if done > last.1 {
            last = (Instant::now(), done);
            first.get_or_insert(last);
        }
        if done >= records.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sum = |name: &str| worker.metric(name);
    eprintln!(
        "  detectors {}: {} batches, commit (with the detector step) {:.1} ms/batch, detector step {:.1} ms/batch",
        if detectors { "on" } else { "off" },
        sum("promo_batch_size_count"),
        1000.0 * sum("promo_commit_latency_seconds_sum") / sum("promo_batch_size_count").max(1.0),
        1000.0 * sum("promo_detector_step_seconds_sum") / sum("promo_batch_size_count").max(1.0),
    );
    let _ = worker.stop(Duration::from_secs(30));
    delete_prefix(&url, &prefix);
    let (t0, n0) = first.expect("something committed");
    assert!(
        last.1 >= records.len(),
        "drained only {} of {}",
        last.1,
        records.len()
    );
    (last.1 - n0) as f64 / (last.0 - t0).as_secs_f64()
}

fn main() {
    let count = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let records = corpus(count);
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..2 {
        off.push(drain_rate(&records, false));
        on.push(drain_rate(&records, true));
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "detectors: {count} orders; off {off:.0?} orders/s, on {on:.0?} orders/s; best on/off = {:.3}",
        best(&on) / best(&off)
    );
}
