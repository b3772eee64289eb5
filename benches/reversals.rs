//! The cost of the decision store (`src/reversals`): the engine over a backlog of sales (with a
//! refund for one order in ten) in batches of 2,000, reversals off (no state at all) and on
//! (every decision's summary, every refund's log, one pipelined script call per program and
//! chunk against the local Redis of `scripts/services up`; detectors off, so the store's cost is
//! seen alone). Then the Redis memory the summaries take, from `INFO memory` before and after,
//! per million stored decisions. Run it with
//!
//! ```sh
//! BENCH_ORDERS=200000 BENCH_ROUNDS=3 cargo bench --bench reversals
//! ```
//!
//! With `BENCH_DETECTORS=1` both passes run the detectors too (state in Redis, each pass under
//! its own key prefix), so "on" adds the decision store and HIGH_REVERSAL_RATE's counting (its
//! second round trip for batches with refunds) to what the detectors already cost; the memory
//! figure then includes the detector state the "on" pass wrote. `BENCH_REVERSAL_RATE=0` turns
//! HIGH_REVERSAL_RATE off in the "on" pass, to see its share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use promo_attribution::detectors::DetectorState;
use promo_attribution::engine::{Engine, Outputs};
use promo_attribution::redis::detector_state::RedisState;
use promo_attribution::table_source::load_from_files;
use support::Names;
use support::redis::{connect, delete_prefix, shared};

const BATCH: usize = 2_000;

fn used_memory(connection: &mut ::redis::Connection) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query(connection)
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

/// Sales, and after every tenth a partial refund of it.
fn backlog(count: usize) -> Vec<Vec<u8>> {
    let mut records = Vec::with_capacity(count + count / 10);
    for (n, sale) in support::orders("REV", count, 17).into_iter().enumerate() {
        let program = support::field(&sale, "program_id");
        records.push(sale);
        if n % 10 == 9 {
            records.push(
                format!(
                    r#"{{"order_id":"REV-{n}","program_id":"{program}","event_type":"refund","event_time":"2026-05-12T10:00:00Z","adjustment_id":"r","reason":"ITEM_RETURNED","amount":0,"currency":"USD"}}"#
                )
                .into_bytes(),
            );
        }
    }
    records
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = env("BENCH_ORDERS", 100_000);
    let detectors = env("BENCH_DETECTORS", 0) == 1;
    let rounds = env("BENCH_ROUNDS", 3);
    let records = backlog(count);
    let batches: Vec<Vec<&[u8]>> = records
        .chunks(BATCH)
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    let (mut off_rates, mut on_rates, mut per_million) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (url, prefix) = shared("bench-reversals");
        let names = Names::new("bench-reversals");
        let sets = [
            format!("store.redis_url={url}"),
            format!("store.key_prefix={prefix}"),
            "reversals.retention_secs=3600".to_string(),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let off_settings = names.settings(&names.transactional_id, &sets);
        let mut off_settings = off_settings;
        if detectors {
            off_settings.detectors.enabled = true;
            off_settings.detectors.customer_hmac_key = "bench-key-0123456789".into();
        }
        let mut on_settings = off_settings.clone();
        on_settings.reversals.enabled = true;
        // BENCH_REVERSAL_RATE=0: the store without HIGH_REVERSAL_RATE's counting.
        on_settings.detectors.defaults.reversal_rate = env("BENCH_REVERSAL_RATE", 1) == 1;
        on_settings.store.key_prefix = format!("{prefix}on:");
        let table = load_from_files(&off_settings.codes)
            .expect("sample table")
            .current();
        let off = Engine::new(Arc::new(off_settings));
        let on = Engine::new(Arc::new(on_settings));
        let new_state = || {
            RedisState::new(&url, Duration::from_secs(5), Duration::from_secs(30))
                .expect("redis url")
        };
        let (mut redis, mut redis_off) = (new_state(), new_state());
        let mut stats = connect(&url);

        let start = Instant::now();
        let mut outputs = Outputs::default();
        for batch in &batches {
            outputs.clear();
            let state = detectors.then_some(&mut redis_off as &mut dyn DetectorState);
            off.run(&table, state, batch, &mut outputs).expect("off");
        }
        let off_rate = records.len() as f64 / start.elapsed().as_secs_f64();

        let before = used_memory(&mut stats);
        let start = Instant::now();
        let mut adjustments = 0usize;
        for batch in &batches {
            outputs.clear();
            on.run(&table, Some(&mut redis), batch, &mut outputs)
                .expect("on");
            adjustments += outputs
                .iter()
                .flat_map(|o| o.writes().collect::<Vec<_>>())
                .filter(|w| w.kind == promo_attribution::engine::WriteKind::Adjustment)
                .count();
        }
        let on_rate = records.len() as f64 / start.elapsed().as_secs_f64();
        let grown = used_memory(&mut stats).saturating_sub(before);
        assert_eq!(adjustments, count / 10, "every refund found its sale");
        let million = grown as f64 / count as f64 * 1e6;
        eprintln!(
            "round {}{}: {} records ({count} sales, {} refunds): reversals off {:.0}/s, on {:.0}/s ({:.1}% of off); Redis +{:.1} MB = {:.0} MB per million decisions",
            round + 1,
            if detectors { " (detectors on)" } else { "" },
            records.len(),
            count / 10,
            off_rate,
            on_rate,
            on_rate / off_rate * 100.0,
            grown as f64 / 1e6,
            million / 1e6
        );
        delete_prefix(&url, &prefix);
        off_rates.push(off_rate);
        on_rates.push(on_rate);
        per_million.push(million);
    }
    println!(
        "reversals: median of {rounds} rounds over {} records: off {:.0} records/s, on {:.0} records/s; Redis {:.0} MB per million stored decisions",
        records.len(),
        median(off_rates),
        median(on_rates),
        median(per_million) / 1e6
    );
}
