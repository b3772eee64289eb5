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
//!
//! `BENCH_REDIS_CLUSTER=1` runs it on the local Redis Cluster (`scripts/redis-cluster`): the
//! Redis figures are then summed over the primaries, and the keys are left to expire.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use promo_attribution::detectors::{
    DetectorState, MemoryState, OrderStep, StateError, StepOutcome,
};
use promo_attribution::engine::{Engine, Outputs};
use promo_attribution::redis::connect::Endpoint;
use promo_attribution::redis::detector_state::{ORDERS_PER_CALL, RedisState};
use promo_attribution::settings::StoreSettings;
use promo_attribution::table_source::load_from_files;
use support::Names;
use support::redis::{connect, delete_prefix, detector_orders, detector_sets, shared};
use support::store::store_settings;

const BATCH: usize = 2_000;

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
    // Within one script call (a program's orders, `ORDERS_PER_CALL` at a time), how many of the
    // counts and keys were already read or touched by an earlier order of the same call.
    let mut by_group: BTreeMap<&str, Vec<&OrderStep>> = BTreeMap::new();
    for step in steps {
        by_group.entry(step.group.as_str()).or_default().push(step);
    }
    let (mut distinct_ranges, mut distinct_keys, mut calls) = (0, 0, 0);
    for group in by_group.values() {
        for call in group.chunks(ORDERS_PER_CALL) {
            calls += 1;
            let mut keys = std::collections::BTreeSet::new();
            let mut counted = std::collections::BTreeSet::new();
            for step in call {
                for op in &step.ops {
                    match op {
                        Op::Add { key, ranges: r, .. } => {
                            keys.insert(key.as_str());
                            for range in r {
                                counted.insert((key.as_str(), range.min, range.max));
                            }
                        }
                        Op::Tally { key, .. } => {
                            keys.insert(key.as_str());
                        }
                    }
                }
            }
            distinct_ranges += counted.len();
            distinct_keys += keys.len();
        }
    }
    let n = steps.len().max(1) as f64;
    eprintln!(
        "  per order within a call ({calls} calls): {:.1} distinct keys, {:.1} distinct (key, range) counts",
        distinct_keys as f64 / n,
        distinct_ranges as f64 / n
    );
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

/// Connections to every node that runs the detectors' scripts: the one node, or the primaries.
fn stats_connections(url: &str) -> Vec<::redis::Connection> {
    if !support::is_cluster(url) {
        return vec![connect(url)];
    }
    let endpoint = Endpoint::new(&store_settings(url, "p:")).expect("cluster settings");
    let map = endpoint.slot_map().expect("slot map");
    map.primaries()
        .iter()
        .map(|node| endpoint.connect_to(node).expect("connect to a primary"))
        .collect()
}

/// `calls` and `usec` of every command in `INFO commandstats`, summed over the nodes.
fn command_stats(connections: &mut [::redis::Connection]) -> BTreeMap<String, (u64, u64)> {
    let mut sum: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for connection in connections {
        for (name, (calls, usec)) in node_command_stats(connection) {
            let entry = sum.entry(name).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }
    sum
}

fn node_command_stats(connection: &mut ::redis::Connection) -> BTreeMap<String, (u64, u64)> {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |name: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            Some((name.to_string(), (field("calls"), field("usec"))))
        })
        .collect()
}

/// CPU seconds the Redis main threads used (user + system, summed over the nodes): unlike
/// `commandstats` usec, which is wall time inside a command, this does not grow when a busy
/// machine deschedules Redis.
fn main_thread_cpu(connections: &mut [::redis::Connection]) -> f64 {
    connections.iter_mut().map(node_main_thread_cpu).sum()
}

fn node_main_thread_cpu(connection: &mut ::redis::Connection) -> f64 {
    let info: String = ::redis::cmd("INFO")
        .arg("cpu")
        .query(connection)
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            matches!(
                name,
                "used_cpu_user_main_thread" | "used_cpu_sys_main_thread"
            )
            .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// What each command cost between two snapshots, per order: (command, calls, µs).
fn stats_delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    orders: usize,
) -> Vec<(String, f64, f64)> {
    let mut delta: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(name, &(calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            let n = orders as f64;
            (
                name.clone(),
                (calls - c0) as f64 / n,
                (usec - u0) as f64 / n,
            )
        })
        .filter(|(_, calls, _)| *calls > 0.0)
        .collect();
    delta.sort_by(|a, b| b.2.total_cmp(&a.2));
    delta
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
    /// Per order: command, calls, µs (the script's own commands are counted too).
    commands: Vec<(String, f64, f64)>,
    /// Redis main thread CPU seconds over the pass (the memory comparison runs meanwhile but
    /// costs Redis nothing).
    cpu: f64,
}

impl Pass {
    fn report(&self, what: &str) {
        eprintln!(
            "  {what}: {} orders in {} batches, {} alerts; Redis evalsha {} calls, {:.2} µs/order, main thread CPU {:.2} µs/order; \
             wall {:.1} ms/batch engine, {:.1} ms/batch state step ({:.2} µs/order)",
            self.orders,
            self.batches,
            self.alerts,
            self.evalsha_calls,
            self.evalsha_usec as f64 / self.orders as f64,
            self.cpu * 1e6 / self.orders as f64,
            self.engine.as_secs_f64() * 1e3 / self.batches as f64,
            self.step.as_secs_f64() * 1e3 / self.batches as f64,
            self.step.as_secs_f64() * 1e6 / self.orders as f64,
        );
        let inner: f64 = self
            .commands
            .iter()
            .filter(|c| c.0 != "evalsha")
            .map(|c| c.2)
            .sum();
        let listed: Vec<String> = self
            .commands
            .iter()
            .filter(|c| c.0 != "evalsha")
            .take(8)
            .map(|(name, calls, usec)| format!("{name} {calls:.1}x {usec:.2}µs"))
            .collect();
        eprintln!(
            "    commands inside the script {inner:.2} µs/order (other clients' too): {}",
            listed.join(", ")
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
    let records = detector_orders(count);
    let batches: Vec<Vec<&[u8]>> = records
        .chunks(BATCH)
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    let mut firsts = Vec::new();
    let mut replays = Vec::new();
    let mut cpus = Vec::new();
    for round in 0..rounds {
        let cluster = std::env::var_os("BENCH_REDIS_CLUSTER").is_some();
        let (url, prefix) = if cluster {
            (
                support::redis_cluster_url().to_string(),
                support::unique_prefix("bench-state"),
            )
        } else {
            shared("bench-state")
        };
        let names = Names::new("bench-state");
        let extra = detector_sets(&url, &prefix);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let settings = names.settings(&names.transactional_id, &extra);
        let table = load_from_files(&settings.codes)
            .expect("sample table")
            .current();
        let engine = Engine::new(Arc::new(settings));
        let mut redis = Timed {
            inner: RedisState::from_settings(&StoreSettings {
                io_timeout_ms: 30_000,
                ..store_settings(&url, &prefix)
            })
            .expect("redis settings"),
            spent: Duration::ZERO,
        };
        let mut memory = MemoryState::new();
        let mut stats = stats_connections(&url);
        let mut pass = |batches: &[Vec<&[u8]>], check: bool| -> Pass {
            let stats0 = command_stats(&mut stats);
            let cpu0 = main_thread_cpu(&mut stats);
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
            let stats1 = command_stats(&mut stats);
            let cpu1 = main_thread_cpu(&mut stats);
            let orders = batches.iter().map(Vec::len).sum();
            let evalsha =
                |s: &BTreeMap<String, (u64, u64)>| s.get("evalsha").copied().unwrap_or((0, 0));
            Pass {
                orders,
                evalsha_calls: evalsha(&stats1).0 - evalsha(&stats0).0,
                evalsha_usec: evalsha(&stats1).1 - evalsha(&stats0).1,
                commands: stats_delta(&stats0, &stats1, orders),
                cpu: cpu1 - cpu0,
                engine: engine_time,
                step: redis.spent,
                batches: batches.len(),
                alerts,
            }
        };
        let first = pass(&batches, true);
        let replay = pass(&batches[..batches.len().min(5)], false);
        if !cluster {
            delete_prefix(&url, &prefix);
        }
        eprintln!("round {}:", round + 1);
        first.report("first pass");
        replay.report("replay pass");
        firsts.push(first.evalsha_usec as f64 / first.orders as f64);
        replays.push(replay.evalsha_usec as f64 / replay.orders as f64);
        cpus.push(first.cpu * 1e6 / first.orders as f64);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "detector_state: {count} orders x {rounds} rounds; Redis µs/order first pass {firsts:.2?} \
         (best {:.2}), replays {replays:.2?} (best {:.2}); Redis CPU µs/order first pass {cpus:.2?} (best {:.2})",
        best(&firsts),
        best(&replays),
        best(&cpus)
    );
}
