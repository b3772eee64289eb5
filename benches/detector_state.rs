//! The detectors' Redis step alone: the engine over a realistic backlog in batches of 2,000
//! against a `RedisState` on the local Redis (`scripts/services up`), no broker in the loop.
//! Reports the Redis CPU per order (the `cmdstat_evalsha` usec delta of `INFO commandstats`:
//! other engineers share this Redis, so deltas, never `CONFIG RESETSTAT`), and the wall time
//! per batch of the whole engine run and of the state step inside it. Every batch is also run
//! against the in-memory state, and the outputs must be byte-identical. Then the first batches
//! again, as replays (every order finds its replay record). Run it with
//!
//! ```sh
//! BENCH_ORDERS=40000 BENCH_ROUNDS=3 cargo bench --bench detector_state
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use promo_attribution::detectors::{
    DetectorState, MemoryState, OrderStep, StateError, StepOutcome,
};
use promo_attribution::engine::{Engine, Outputs};
use promo_attribution::redis::detector_state::RedisState;
use promo_attribution::table_source::load_from_files;
use serde_json::{Value, json};
use support::redis::{connect, delete_prefix, detector_sets, shared};
use support::{Names, Rng, orders};

const BATCH: usize = 2_000;

/// The orders of `benches/detectors.rs`: the test generator with a few thousand customers,
/// devices and IPs, so per-customer and per-actor sets hold realistic sizes.
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

/// A state that times its `apply` calls.
struct Timed<S> {
    inner: S,
    spent: Duration,
}

impl<S: DetectorState> DetectorState for Timed<S> {
    fn apply(&mut self, steps: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError> {
        if std::env::var_os("BENCH_SHAPE").is_some() {
            shape(steps);
        }
        let start = Instant::now();
        let out = self.inner.apply(steps);
        self.spent += start.elapsed();
        out
    }
}

/// What a batch's steps hold, on average per order (`BENCH_SHAPE=1`).
fn shape(steps: &[OrderStep]) {
    use promo_attribution::detectors::state::Op;
    let (mut ops, mut adds, mut members, mut ranges, mut evidence, mut gates) = (0, 0, 0, 0, 0, 0);
    for step in steps {
        ops += step.ops.len();
        for op in &step.ops {
            match op {
                Op::Add {
                    members: m,
                    ranges: r,
                    evidence: e,
                    ..
                } => {
                    adds += 1;
                    members += m.len();
                    ranges += r.len();
                    evidence += e.as_ref().map_or(0, |e| e.ranges.len());
                    gates += usize::from(e.is_some());
                }
                Op::Tally {
                    members: m,
                    evidence: e,
                    ..
                } => {
                    members += m.len();
                    gates += usize::from(e.is_some());
                }
            }
        }
    }
    let n = steps.len().max(1) as f64;
    eprintln!(
        "  shape: {} steps; per order {:.1} ops ({:.1} adds), {:.1} members, {:.1} ranges, {:.1} evidence ranges, {:.1} gates",
        steps.len(),
        ops as f64 / n,
        adds as f64 / n,
        members as f64 / n,
        ranges as f64 / n,
        evidence as f64 / n,
        gates as f64 / n
    );
}

/// `calls` and `usec` of a command in `INFO commandstats`.
fn command_stats(connection: &mut ::redis::Connection, command: &str) -> (u64, u64) {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line[prefix.len()..]
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// Every write of `outputs`, as bytes, to compare two runs.
fn writes(outputs: &Outputs) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    outputs
        .iter()
        .flat_map(|o| {
            o.writes()
                .map(|w| (format!("{:?}", w.kind), w.key.to_vec(), w.value.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

struct Pass {
    orders: usize,
    evalsha_calls: u64,
    evalsha_usec: u64,
    engine: Duration,
    step: Duration,
    batches: usize,
    alerts: usize,
}

impl Pass {
    fn report(&self, what: &str) {
        eprintln!(
            "  {what}: {} orders in {} batches, {} alerts; Redis evalsha {} calls, {:.2} µs/order; \
             wall {:.1} ms/batch engine, {:.1} ms/batch state step ({:.2} µs/order)",
            self.orders,
            self.batches,
            self.alerts,
            self.evalsha_calls,
            self.evalsha_usec as f64 / self.orders as f64,
            self.engine.as_secs_f64() * 1e3 / self.batches as f64,
            self.step.as_secs_f64() * 1e3 / self.batches as f64,
            self.step.as_secs_f64() * 1e6 / self.orders as f64,
        );
    }
}

fn main() {
    let count = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let records = corpus(count);
    let batches: Vec<Vec<&[u8]>> = records
        .chunks(BATCH)
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    let mut firsts = Vec::new();
    let mut replays = Vec::new();
    for round in 0..rounds {
        let (url, prefix) = shared("bench-state");
        let names = Names::new("bench-state");
        let extra = detector_sets(&url, &prefix);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let settings = names.settings(&names.transactional_id, &extra);
        let table = load_from_files(&settings.codes)
            .expect("sample table")
            .current();
        let engine = Engine::new(Arc::new(settings));
        let mut redis = Timed {
            inner: RedisState::new(&url, Duration::from_secs(5), Duration::from_secs(30))
                .expect("redis url"),
            spent: Duration::ZERO,
        };
        let mut memory = MemoryState::new();
        let mut stats = connect(&url);
        let mut pass = |batches: &[Vec<&[u8]>], check: bool| -> Pass {
            let (calls0, usec0) = command_stats(&mut stats, "evalsha");
            redis.spent = Duration::ZERO;
            let mut engine_time = Duration::ZERO;
            let mut alerts = 0;
            for batch in batches {
                let mut out = Outputs::default();
                let start = Instant::now();
                engine
                    .run(&table, Some(&mut redis), batch, &mut out)
                    .expect("redis step");
                engine_time += start.elapsed();
                let got = writes(&out);
                alerts += got.iter().filter(|w| w.0 != "Conversion").count();
                if check {
                    let mut expected = Outputs::default();
                    engine
                        .run(&table, Some(&mut memory), batch, &mut expected)
                        .expect("memory");
                    assert!(got == writes(&expected), "Redis and memory state disagree");
                }
            }
            let (calls1, usec1) = command_stats(&mut stats, "evalsha");
            Pass {
                orders: batches.iter().map(Vec::len).sum(),
                evalsha_calls: calls1 - calls0,
                evalsha_usec: usec1 - usec0,
                engine: engine_time,
                step: redis.spent,
                batches: batches.len(),
                alerts,
            }
        };
        let first = pass(&batches, true);
        let replay = pass(&batches[..batches.len().min(5)], false);
        delete_prefix(&url, &prefix);
        eprintln!("round {}:", round + 1);
        first.report("first pass");
        replay.report("replay pass");
        firsts.push(first.evalsha_usec as f64 / first.orders as f64);
        replays.push(replay.evalsha_usec as f64 / replay.orders as f64);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "detector_state: {count} orders x {rounds} rounds; Redis µs/order first pass {firsts:.2?} \
         (best {:.2}), replays {replays:.2?} (best {:.2})",
        best(&firsts),
        best(&replays)
    );
}
