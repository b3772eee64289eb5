//! Throughput with the detectors off and on, the real pipeline (local broker, worker, Redis) in
//! one run: each mode drains the same backlog, alternating, and the rate is taken from the first
//! committed batch to the last, and so is the CPU of this process (the worker runs in it; Redis
//! and the broker are not counted). Takes minutes; not part of CI. `scripts/bench` runs the same
//! comparison with the worker binary and counts Redis too. Run it with
//!
//! ```sh
//! BENCH_ORDERS=100000 cargo bench --bench detectors
//! ```

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

// The allocator the worker binary uses.
#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

use std::time::{Duration, Instant};

use promo_attribution::kafka::tools;
use support::redis::{delete_prefix, detector_orders, detector_sets, shared};
use support::{InProcessWorker, Names, brokers};

/// CPU seconds (user + system, all threads) of this process so far.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Orders per second and CPU seconds per million orders while draining `records` from a fresh
/// topic.
fn drain_rate(records: &[Vec<u8>], detectors: bool) -> (f64, f64) {
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
    let committed = || worker.metric("promo_batch_size_records_sum") as usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, usize, f64)> = None;
    let mut last = (Instant::now(), 0, 0.0);
    while Instant::now() < deadline {
        let done = committed();
        if done > last.1 {
            last = (Instant::now(), done, process_cpu_seconds());
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
        sum("promo_batch_size_records_count"),
        1000.0 * sum("promo_commit_latency_seconds_sum")
            / sum("promo_batch_size_records_count").max(1.0),
        1000.0 * sum("promo_detector_step_seconds_sum")
            / sum("promo_batch_size_records_count").max(1.0),
    );
    let _ = worker.stop(Duration::from_secs(30));
    delete_prefix(&url, &prefix);
    let (t0, n0, cpu0) = first.expect("something committed");
    assert!(
        last.1 >= records.len(),
        "drained only {} of {}",
        last.1,
        records.len()
    );
    let drained = (last.1 - n0) as f64;
    (
        drained / (last.0 - t0).as_secs_f64(),
        (last.2 - cpu0) * 1e6 / drained,
    )
}

fn main() {
    let count = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let records = detector_orders(count);
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..2 {
        off.push(drain_rate(&records, false));
        on.push(drain_rate(&records, true));
    }
    let rates = |runs: &[(f64, f64)]| runs.iter().map(|r| r.0).collect::<Vec<_>>();
    let cpus = |runs: &[(f64, f64)]| runs.iter().map(|r| r.1).collect::<Vec<_>>();
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let least = |cpus: &[f64]| cpus.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "detectors: {count} orders; off {:.0?} orders/s, on {:.0?} orders/s; best on/off = {:.3}",
        rates(&off),
        rates(&on),
        best(&rates(&on)) / best(&rates(&off))
    );
    eprintln!(
        "detectors: bench-process CPU s per million orders: off {:.1?}, on {:.1?}; least on/off = {:.2}",
        cpus(&off),
        cpus(&on),
        least(&cpus(&on)) / least(&cpus(&off))
    );
}
