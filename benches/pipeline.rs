//! W4 of `performance.md`: one order end to end in memory — `parse_order`, `decide`, and the
//! conversion and alerts serialized into a reused buffer — against the full W3 table
//! (1,000,000 exact codes, 10,020 regex codes), next to a naive `serde_json::Value` pipeline.
//!
//! Run with `cargo bench --bench pipeline`.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

// The allocator the worker binary uses, so the table is laid out the same way.
#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promo_attribution::attribution::decide;
use promo_attribution::codes::{CodeTable, MatchType};
use promo_attribution::engine::{Engine, Outputs};
use promo_attribution::schema::{Status, ValidOrder, parse_order};
use promo_attribution::settings::{AttributionSettings, InputLimits, Settings};
use serde_json::{Value, json};

use support::corpus::{Corpus, order_line};
use support::{MAIN_PROGRAM, Rng, Synthetic, W3};

/// Orders per timed iteration.
const ORDERS: usize = 4096;
const SEED: u64 = 0x5EED_0004;
/// The pipeline under test, for one order: parse, decide, serialize into `out` with the records'
/// own writers (`Conversion::write_json`, `Alert::write_json`).
fn process(
    record: &[u8],
    table: &CodeTable,
    limits: &InputLimits,
    settings: &AttributionSettings,
    out: &mut Vec<u8>,
) -> Status {
    out.clear();
    let order = parse_order(record, limits).expect("the corpus is valid");
    let decision = decide(record, &order, table, settings);
    decision
        .conversion
        .write_json(out)
        .expect("writes to a Vec");
    out.push(b'\n');
    for alert in &decision.alerts {
        alert.write_json(out).expect("writes to a Vec");
        out.push(b'\n');
    }
    decision.conversion.status
}

/// One order through the engine, as the worker runs it: parse, decide, serialize and size-check
/// into reused outputs.
fn process_engine(record: &[u8], engine: &Engine, table: &CodeTable, out: &mut Outputs) -> Status {
    out.clear();
    engine
        .run(table, None, &[record], out)
        .expect("no detectors, no state");
    match out.iter().next().map(|r| r.result) {
        Some(Ok(decided)) => decided.status,
        other => panic!("the corpus is valid: {other:?}"),
    }
}

/// The same pipeline serializing through `serde_json::to_writer`, as the callers did before the
/// writers existed; it must produce the same bytes.
fn process_serde(
    record: &[u8],
    table: &CodeTable,
    limits: &InputLimits,
    settings: &AttributionSettings,
    out: &mut Vec<u8>,
) -> Status {
    out.clear();
    let order = parse_order(record, limits).expect("the corpus is valid");
    let decision = decide(record, &order, table, settings);
    serde_json::to_writer(&mut *out, &decision.conversion).expect("writes to a Vec");
    out.push(b'\n');
    for alert in &decision.alerts {
        serde_json::to_writer(&mut *out, alert).expect("writes to a Vec");
        out.push(b'\n');
    }
    decision.conversion.status
}

/// The naive pipeline: a `Value` DOM, a `HashMap<String, _>` keyed by the upper-cased code, a
/// `json!` output. It does less than the real one (no regex codes, no click rules, no alerts, no
/// event id), so the ratio against it understates the gain.
fn baseline(
    record: &[u8],
    table: &CodeTable,
    codes: &HashMap<String, u32>,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    let order: Value = serde_json::from_slice(record).expect("the corpus is valid");
    let mut matched = None;
    let mut unknown = Vec::new();
    for code in order["promo_codes"].as_array().into_iter().flatten() {
        let entered = code.as_str().unwrap_or_default();
        match codes.get(&entered.trim().to_uppercase()) {
            Some(&id) if matched.is_none() => matched = Some((entered, id)),
            Some(_) => {}
            None => unknown.push(code.clone()),
        }
    }
    let winner = order["touchpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["kind"] == "click")
        .max_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()))
        .and_then(|t| t["partner_id"].as_str());
    let code = matched.map(|(entered, id)| {
        let entry = table.entry(id);
        json!({
            "entered": entered,
            "code_id": table.code_id(id),
            "owner_partner_id": entry.owner_partner_id,
            "credit_policy": entry.credit_policy,
        })
    });
    let partner = matched
        .and_then(|(_, id)| table.entry(id).owner_partner_id.as_deref())
        .or(winner);
    let conversion = json!({
        "schema_version": 1,
        "order_id": order["order_id"],
        "program_id": order["program_id"],
        "event_type": order["event_type"],
        "event_time": order["event_time"],
        "status": if partner.is_some() { "CREDITED" } else { "UNATTRIBUTED" },
        "partner_id": partner,
        "code": code,
        "winning_click": winner,
        "unknown_codes": unknown,
        "code_table_version": table.version(),
    });
    serde_json::to_writer(&mut *out, &conversion).expect("writes to a Vec");
    out.push(b'\n');
    out.len()
}

fn pipeline(c: &mut Criterion) {
    let synthetic = Synthetic::generate(&W3, SEED);
    let corpus = Corpus::from(&synthetic);
    let started = Instant::now();
    let table = CodeTable::build(
        synthetic.entries,
        synthetic.partners,
        "bench",
        "synthetic",
        W3.build_options(),
    )
    .expect("the synthetic table is valid");
    eprintln!(
        "table_build_once_ms={:.0} (exact={} regex={})",
        started.elapsed().as_secs_f64() * 1e3,
        W3.exact_total(),
        W3.regex_total()
    );

    let mut rng = Rng::new(SEED ^ 0x0DE5);
    let lines: Vec<String> = (0..ORDERS)
        .map(|i| order_line(&mut rng, i, &table, &corpus))
        .collect();
    let records: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let limits = InputLimits::default();
    let settings = AttributionSettings::default();
    let engine = Engine::new(Arc::new(Settings::default()));
    let mut engine_out = Outputs::default();

    // Describe the corpus, and check that it is decided as intended.
    let mut out = Vec::with_capacity(4096);
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let mut alert_kinds: HashMap<&str, usize> = HashMap::new();
    let (mut alerts, mut out_bytes) = (0, 0);
    let (mut codes, mut regex_matched, mut exact_matched) = (0, 0, 0);
    for record in &records {
        let order = parse_order(record, &limits).expect("valid");
        let decision = decide(record, &order, &table, &settings);
        *by_status
            .entry(format!("{:?}", decision.conversion.status))
            .or_default() += 1;
        alerts += decision.alerts.len();
        for alert in &decision.alerts {
            *alert_kinds.entry(alert.kind.as_str()).or_default() += 1;
        }
        codes += order.order.promo_codes.len();
        let program = table.program(MAIN_PROGRAM).expect("P1 exists");
        for code in &order.order.promo_codes {
            match table
                .lookup(program, code, &mut Vec::new())
                .map(|m| table.entry(m.entry).match_type)
            {
                Some(MatchType::Exact) => exact_matched += 1,
                Some(MatchType::Regex) => regex_matched += 1,
                None => {}
            }
        }
        let mut serde_out = Vec::new();
        process_serde(record, &table, &limits, &settings, &mut serde_out);
        process(record, &table, &limits, &settings, &mut out);
        assert_eq!(
            out, serde_out,
            "the writers must match serde_json byte for byte"
        );
        process_engine(record, &engine, &table, &mut engine_out);
        let engine_bytes: Vec<u8> = engine_out
            .iter()
            .flat_map(|r| {
                r.writes()
                    .flat_map(|w| [w.value, b"\n"])
                    .flatten()
                    .copied()
                    .collect::<Vec<u8>>()
            })
            .collect();
        assert_eq!(engine_bytes, out, "the engine writes the same bytes");
        out_bytes += out.len();
    }
    let in_bytes: usize = records.iter().map(|r| r.len()).sum();
    let mut statuses: Vec<_> = by_status.into_iter().collect();
    statuses.sort();
    let mut alert_kinds: Vec<_> = alert_kinds.into_iter().collect();
    alert_kinds.sort();
    eprintln!("corpus_sample={}", lines[0]);
    eprintln!(
        "corpus orders={ORDERS} mean_bytes={:.0} min_bytes={} max_bytes={} codes={codes} exact_hits={exact_matched} regex_hits={regex_matched} unknown={} statuses={statuses:?} alerts={alerts} {alert_kinds:?} mean_output_bytes={:.0}",
        in_bytes as f64 / ORDERS as f64,
        records.iter().map(|r| r.len()).min().unwrap_or(0),
        records.iter().map(|r| r.len()).max().unwrap_or(0),
        codes - exact_matched - regex_matched,
        out_bytes as f64 / ORDERS as f64,
    );

    let mut group = c.benchmark_group("pipeline");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30)
        .throughput(Throughput::Elements(ORDERS as u64));
    group.bench_function("parse_decide_serialize", |b| {
        b.iter(|| {
            let mut credited = 0usize;
            for record in &records {
                let status = process(black_box(record), &table, &limits, &settings, &mut out);
                credited += (status == Status::Credited) as usize;
            }
            credited
        })
    });
    group.bench_function("engine", |b| {
        b.iter(|| {
            let mut credited = 0usize;
            for record in &records {
                let status = process_engine(black_box(record), &engine, &table, &mut engine_out);
                credited += (status == Status::Credited) as usize;
            }
            credited
        })
    });
    group.bench_function("parse_decide_serialize_serde", |b| {
        b.iter(|| {
            let mut credited = 0usize;
            for record in &records {
                let status = process_serde(black_box(record), &table, &limits, &settings, &mut out);
                credited += (status == Status::Credited) as usize;
            }
            credited
        })
    });
    // The stages on their own, to show where the time goes.
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut codes = 0usize;
            for record in &records {
                let order = parse_order(black_box(record), &limits).expect("valid");
                codes += order.order.promo_codes.len();
            }
            codes
        })
    });
    let parsed: Vec<ValidOrder<'_>> = records
        .iter()
        .map(|r| parse_order(r, &limits).expect("valid"))
        .collect();
    group.bench_function("decide_only", |b| {
        b.iter(|| {
            let mut alerts = 0usize;
            for (record, order) in records.iter().zip(&parsed) {
                let decision = decide(record, black_box(order), &table, &settings);
                alerts += decision.alerts.len();
            }
            alerts
        })
    });
    group.bench_function("decide_serialize", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for (record, order) in records.iter().zip(&parsed) {
                out.clear();
                let decision = decide(record, black_box(order), &table, &settings);
                decision.conversion.write_json(&mut out).expect("writes");
                for alert in &decision.alerts {
                    alert.write_json(&mut out).expect("writes");
                }
                bytes += out.len();
            }
            bytes
        })
    });
    drop(parsed);

    // The naive pipeline on the same corpus and table.
    let naive_codes: HashMap<String, u32> = corpus
        .main_exact
        .iter()
        .map(|&id| (table.entry(id).code.to_uppercase(), id))
        .collect();
    group.bench_function("value_baseline", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for record in &records {
                bytes += baseline(black_box(record), &table, &naive_codes, &mut out);
            }
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
