//! HIGH_REVERSAL_RATE through the engine with in-memory state (no services): a leaked code
//! whose orders come back fires, per code and per partner, once per incident and again at the
//! next power of two; normal return rates, a share exactly at the threshold and too few orders
//! stay silent; replays, repeated adjustment ids and other batch boundaries give the same bytes.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use promo_attribution::codes::CodeTable;
use promo_attribution::codes::load::read_codes_lenient;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::detectors::{MemoryState, Thresholds};
use promo_attribution::engine::{Engine, Outputs, WriteKind};
use promo_attribution::settings::Settings;
use serde_json::Value;

/// One partner per code, so each partner's share is its code's.
const CODES: &str = "\
Promo Code,Program Id,Media Id,Type,Credit Rule
LEAK,1,100,TRACKING,ALWAYS
GOOD,1,101,TRACKING,ALWAYS
HALF,1,102,TRACKING,ALWAYS
FEW,1,103,TRACKING,ALWAYS
";

fn table() -> CodeTable {
    let (entries, problems) = read_codes_lenient(CODES.as_bytes(), "codes");
    assert!(problems.is_empty(), "{problems:?}");
    CodeTable::build(entries, Vec::new(), "v1", "codes", BuildOptions::default()).expect("table")
}

fn engine(thresholds: Thresholds) -> Engine {
    let mut settings = Settings::default();
    settings.store.key_prefix = "t:".into();
    settings.detectors.enabled = true;
    settings.detectors.customer_hmac_key = "test-key-0123456789".into();
    settings.detectors.defaults = thresholds;
    settings.reversals.enabled = true;
    Engine::new(Arc::new(settings))
}

fn thresholds() -> Thresholds {
    Thresholds {
        reversal_min_orders: 20,
        reversal_share_percent: 50,
        ..Thresholds::default()
    }
}

/// 2026-05-14 is the first day of a 7-day window (windows align on the epoch, a Thursday).
fn sale(code: &str, n: usize) -> String {
    format!(
        r#"{{"order_id":"{code}-{n}","program_id":"1","event_type":"sale","event_time":"2026-05-14T{:02}:{:02}:00Z","promo_codes":["{code}"],"amount":100.00,"currency":"EUR"}}"#,
        n / 60,
        n % 60
    )
}

/// A cancel (nothing remains) or a refund to `left`, days after the sale: the window is the
/// sale's, not the refund's.
fn reversal(code: &str, n: usize, id: &str, left: Option<&str>) -> String {
    let (kind, money) = match left {
        Some(amount) => ("refund", format!(r#","amount":{amount},"currency":"EUR""#)),
        None => ("cancel", String::new()),
    };
    format!(
        r#"{{"order_id":"{code}-{n}","program_id":"1","event_type":"{kind}","event_time":"2026-05-25T10:00:00Z","adjustment_id":"{id}","reason":"ITEM_RETURNED"{money}}}"#
    )
}

/// Every write's kind and bytes, in order.
fn run(
    engine: &Engine,
    state: &mut MemoryState,
    records: &[String],
    batch: usize,
) -> Vec<(WriteKind, Vec<u8>)> {
    let table = table();
    let mut writes = Vec::new();
    for chunk in records.chunks(batch) {
        let slices: Vec<&[u8]> = chunk.iter().map(|r| r.as_bytes()).collect();
        let mut out = Outputs::default();
        engine
            .run(&table, Some(state), &slices, &mut out)
            .expect("memory state");
        for outcome in out.iter() {
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            writes.extend(outcome.writes().map(|w| (w.kind, w.value.to_vec())));
        }
    }
    writes
}

fn rate_alerts(writes: &[(WriteKind, Vec<u8>)]) -> Vec<Value> {
    writes
        .iter()
        .filter(
            |(kind, _)| matches!(kind, WriteKind::Alert(k) if k.as_str() == "HIGH_REVERSAL_RATE"),
        )
        .map(|(_, bytes)| serde_json::from_slice(bytes).expect("alert json"))
        .collect()
}

/// `sales` sales of `code`, the first `reversed` of them cancelled, the cancels interleaved
/// with the sales (each a few sales after its own).
fn scenario(code: &str, sales: usize, reversed: usize) -> Vec<String> {
    let mut records = Vec::new();
    for n in 0..sales {
        records.push(sale(code, n));
        if n >= 3 && n - 3 < reversed {
            records.push(reversal(code, n - 3, "c1", None));
        }
    }
    for n in sales.saturating_sub(3)..reversed {
        records.push(reversal(code, n, "c1", None));
    }
    records
}

#[test]
fn a_leaked_code_with_returns_fires_per_code_and_partner_then_at_powers_of_two() {
    let engine = engine(thresholds());
    // 40 sales of 100, each of the first 35 cancelled three sales later: when the 20th sale
    // makes the volume, 17 of the 20 are back (85 %); then again at 32 reversed orders.
    let records = scenario("LEAK", 40, 35);
    let writes = run(&engine, &mut MemoryState::new(), &records, 64);
    let alerts = rate_alerts(&writes);
    let seen: Vec<(String, u64)> = alerts
        .iter()
        .map(|a| {
            (
                a["detail"]["subject"].as_str().unwrap().to_string(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("code".into(), 17),
            ("partner".into(), 17),
            ("code".into(), 32),
            ("partner".into(), 32),
        ]
    );
    let first = &alerts[0];
    assert_eq!(first["code_id"], "LI:LEAK");
    assert_eq!(alerts[1]["owner_partner_id"], "100");
    assert_eq!(first["alert_id"], alerts[2]["alert_id"], "one incident");
    assert_ne!(
        first["alert_id"], alerts[1]["alert_id"],
        "code and partner apart"
    );
    assert_eq!(first["detail"]["credited_orders"], 20);
    assert_eq!(first["detail"]["credited_amount"], "2000.00");
    assert_eq!(first["detail"]["reversed_amount"], "1700.00");
    assert_eq!(first["detail"]["reversed_share_percent"], 85);
    assert_eq!(first["detail"]["window_start"], "2026-05-14T00:00:00Z");
    assert_eq!(first["detail"]["currency"], "EUR");
    let evidence = first["order_ids"].as_array().unwrap();
    assert_eq!(evidence.len(), 17);
    assert_eq!(evidence[0], "LEAK-0");
    assert_eq!(
        alerts[2]["order_ids"].as_array().unwrap().len(),
        20,
        "capped"
    );
}

/// Every alert of the leak scenario meets the alert schema, and the last one of the code is
/// `schema/examples/alerts/HIGH_REVERSAL_RATE.json` (`UPDATE_EXAMPLES=1` rewrites it).
#[test]
fn alerts_meet_the_schema_and_the_example_is_real_output() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("schema/alert.schema.json")).expect("schema"),
    )
    .expect("json");
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("compiles");
    let writes = run(
        &engine(thresholds()),
        &mut MemoryState::new(),
        &scenario("LEAK", 40, 35),
        64,
    );
    let alerts = rate_alerts(&writes);
    for alert in &alerts {
        let errors: Vec<String> = validator
            .iter_errors(alert)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {alert}");
    }
    let mut broken = alerts[0].clone();
    broken["detail"]["reversed_amount"] = Value::from(17);
    assert!(!validator.is_valid(&broken), "amounts are decimal strings");
    let last = alerts
        .iter()
        .rev()
        .find(|a| a["detail"]["subject"] == "code")
        .expect("a code alert");
    let path = repo.join("schema/examples/alerts/HIGH_REVERSAL_RATE.json");
    if std::env::var_os("UPDATE_EXAMPLES").is_some() {
        let pretty = serde_json::to_string_pretty(last).expect("json");
        std::fs::write(&path, pretty + "\n").expect("write example");
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("example")).expect("json");
    assert_eq!(&stored, last, "run with UPDATE_EXAMPLES=1 to refresh");
}

#[test]
fn normal_returns_a_share_at_the_threshold_and_too_few_orders_stay_silent() {
    let engine = engine(thresholds());
    let mut records = scenario("GOOD", 40, 8);
    // Exactly half of the amount: partial refunds to 50 of 30 orders' 100 (1500 of 3000).
    for n in 0..30 {
        records.push(sale("HALF", n));
        records.push(reversal("HALF", n, "r1", Some("50")));
    }
    // Every order back, but 19 orders are below the minimum volume of 20.
    records.extend(scenario("FEW", 19, 19));
    let writes = run(&engine, &mut MemoryState::new(), &records, 50);
    assert_eq!(rate_alerts(&writes), Vec::<Value>::new());
    // One more cent back on HALF tips it over; one more FEW order makes the volume.
    let mut more = vec![reversal("HALF", 0, "r2", Some("49.99"))];
    more.push(sale("FEW", 19));
    more.push(reversal("FEW", 19, "c1", None));
    let mut state = MemoryState::new();
    run(&engine, &mut state, &records, 50);
    let alerts = rate_alerts(&run(&engine, &mut state, &more, 50));
    let codes: Vec<&str> = alerts
        .iter()
        .filter_map(|a| a["code_id"].as_str())
        .collect();
    assert_eq!(codes, ["LI:HALF", "LI:FEW"]);
}

#[test]
fn replays_repeats_and_batch_boundaries_give_the_same_bytes() {
    let engine = engine(thresholds());
    let mut records = scenario("LEAK", 40, 35);
    // Repeats of adjustment ids (the same cancel again, a refund repeated with other content)
    // count once: the first result wins.
    records.push(reversal("LEAK", 36, "r1", Some("10")));
    records.push(reversal("LEAK", 36, "r1", Some("10")));
    records.push(reversal("LEAK", 36, "r1", Some("20")));
    records.push(reversal("LEAK", 0, "c1", None));
    let whole = run(&engine, &mut MemoryState::new(), &records, records.len());
    for batch in [1, 7, 33] {
        let split = run(&engine, &mut MemoryState::new(), &records, batch);
        assert!(split == whole, "batches of {batch} differ from one batch");
    }
    let mut state = MemoryState::new();
    let first = run(&engine, &mut state, &records, 16);
    let replayed = run(&engine, &mut state, &records, 16);
    assert!(first == replayed, "a replay writes other bytes");
    let alerts = rate_alerts(&whole);
    assert_eq!(alerts.len(), 4, "the repeats counted nothing more");
    let last = alerts.last().unwrap();
    assert_eq!(last["detail"]["reversed_orders"], 32);
}

#[test]
fn the_detector_is_off_per_program_or_without_the_detectors() {
    let off = Thresholds {
        reversal_rate: false,
        ..thresholds()
    };
    let records = scenario("LEAK", 40, 35);
    let writes = run(&engine(off.clone()), &mut MemoryState::new(), &records, 64);
    assert!(rate_alerts(&writes).is_empty());
    assert!(
        writes.iter().any(|(k, _)| *k == WriteKind::Adjustment),
        "adjustments are still written"
    );
    // Turned on after the sales were decided: their refunds count against no credit, so they
    // are not counted at all (else every refund of an old sale would look like a leak).
    let mut state = MemoryState::new();
    let sales: Vec<String> = (0..40).map(|n| sale("LEAK", n)).collect();
    let cancels: Vec<String> = (0..35).map(|n| reversal("LEAK", n, "c1", None)).collect();
    run(&engine(off), &mut state, &sales, 64);
    // Twenty sales credited since, in the same window: the volume is there.
    let since: Vec<String> = (40..60).map(|n| sale("LEAK", n)).collect();
    run(&engine(thresholds()), &mut state, &since, 64);
    let later = run(&engine(thresholds()), &mut state, &cancels, 64);
    assert!(rate_alerts(&later).is_empty());
    assert_eq!(
        later
            .iter()
            .filter(|(k, _)| *k == WriteKind::Adjustment)
            .count(),
        35
    );
}
