//! Adjustments through the real pipeline (the local broker, the worker, Redis): the stream's
//! adjustment records, alerts and conversions equal the offline mode's for a corpus of sales,
//! partial refunds, cancels and repeats, and adjustments of orders decided before a worker
//! restart still find their original in Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use promo_attribution::codes::table::BuildOptions;
use promo_attribution::kafka::tools;
use promo_attribution::offline;
use promo_attribution::settings::Settings;
use support::redis::{assert_same_distinct, delete_prefix, produce, shared};
use support::{InProcessWorker, Names, brokers, payloads, read_settled};

const STOP: Duration = Duration::from_secs(30);

fn sale(n: usize) -> Vec<u8> {
    format!(
        r#"{{"order_id":"S-{n}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:{:02}:00Z","promo_codes":["anna10"],"amount":{}.{:02},"discount":5.00,"currency":"USD"}}"#,
        n % 60,
        50 + n,
        n % 100
    )
    .into_bytes()
}

fn adjustment(n: usize, kind: &str, id: &str, money: &str) -> Vec<u8> {
    format!(
        r#"{{"order_id":"S-{n}","program_id":"1001","event_type":"{kind}","event_time":"2026-05-12T09:00:00Z","adjustment_id":"{id}","reason":"ITEM_RETURNED"{money}}}"#
    )
    .into_bytes()
}

/// Partial refunds, cancels after them, repeats of both, a cancel of an order never decided and
/// a refund in another currency.
fn adjustments(sales: usize) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for n in 0..sales {
        match n % 4 {
            0 => records.push(adjustment(
                n,
                "refund",
                "r1",
                r#","amount":20.00,"currency":"USD""#,
            )),
            1 => {
                records.push(adjustment(
                    n,
                    "refund",
                    "r1",
                    r#","amount":30,"currency":"USD""#,
                ));
                records.push(adjustment(n, "cancel", "c1", ""));
                records.push(adjustment(
                    n,
                    "refund",
                    "r1",
                    r#","amount":30,"currency":"USD""#,
                ));
            }
            2 => records.push(adjustment(n, "cancel", "c1", "")),
            _ => {}
        }
    }
    records.push(adjustment(10_000, "cancel", "c1", ""));
    records.push(adjustment(
        3,
        "refund",
        "r-eur",
        r#","amount":1,"currency":"EUR""#,
    ));
    records
}

/// A test's adjustments topic, Redis prefix and worker settings.
struct Setup {
    topic: String,
    url: String,
    prefix: String,
    settings: Settings,
    /// The `--set` overrides beyond the names', for a subprocess worker.
    sets: Vec<String>,
}

fn setup(names: &Names, test: &str, batch: usize, more: &[&str]) -> Setup {
    let topic = format!("{}.adjustments", names.input);
    tools::create_topics(brokers(), &[&topic], 3).expect("create the adjustments topic");
    let (url, prefix) = shared(test);
    let mut sets = vec![
        "reversals.enabled=true".to_string(),
        format!("reversals.topic={topic}"),
        "reversals.retention_secs=3600".into(),
        format!("store.redis_url={url}"),
        format!("store.key_prefix={prefix}"),
        format!("kafka.batch_max_records={batch}"),
    ];
    sets.extend(more.iter().map(|s| s.to_string()));
    let extra: Vec<&str> = sets.iter().map(String::as_str).collect();
    let settings = names.settings(&names.transactional_id, &extra);
    Setup {
        topic,
        url,
        prefix,
        settings,
        sets,
    }
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn stream_equals_offline_across_a_worker_restart() {
    let names = Names::new("adjustments");
    names.create_topics(2);
    let Setup {
        topic,
        url,
        prefix,
        settings,
        ..
    } = setup(&names, "adjustments", 5, &[]);
    let sales: Vec<Vec<u8>> = (0..24).map(sale).collect();
    let adjustments = adjustments(sales.len());

    // Worker one decides the sales and stops; worker two gets only the adjustments, so every
    // original it needs was stored by the first.
    let first = InProcessWorker::start(settings.clone());
    produce(&names.input, &sales);
    let conversions = read_settled(&names.conversions, sales.len());
    assert_eq!(conversions.len(), sales.len(), "every sale decided");
    assert!(first.stop(STOP).is_ok(), "worker one drains");
    let second = InProcessWorker::start(settings.clone());
    produce(&names.input, &adjustments);

    let table = offline::load_table(
        settings.codes.codes_file.as_deref().expect("codes"),
        settings.codes.partners_file.as_deref(),
        BuildOptions::default(),
    )
    .expect("table");
    let all: Vec<Vec<u8>> = sales.iter().chain(&adjustments).cloned().collect();
    let expected =
        offline::attribute_captured(&all.join(&b'\n'), "test", &table, &settings).expect("offline");
    let expected_records = lines(&expected.adjustments);
    let expected_alerts = lines(&expected.alerts);
    assert!(expected_records.len() > 20 && !expected_alerts.is_empty());
    let records = payloads(&read_settled(&topic, expected_records.len()));
    let alerts = payloads(&read_settled(&names.alerts, expected_alerts.len()));
    let dead = payloads(&read_settled(&names.dlq, 1));
    // Worker two read every adjustment event; the one without a decision wrote no record.
    let rendered = second.render();
    let none = support::metric(
        &rendered,
        r#"promo_adjustments_total{kind="NONE",reason=""}"#,
    );
    let reversals = support::metric(
        &rendered,
        r#"promo_adjustments_total{kind="REVERSAL",reason="ITEM_RETURNED"}"#,
    );
    assert_eq!(none, Some(1.0), "{rendered}");
    assert!(reversals.is_some_and(|n| n >= 12.0), "{rendered}");
    assert!(second.stop(STOP).is_ok(), "worker two drains");

    assert_same_distinct(&records, &expected_records, "adjustments vs offline");
    assert_same_distinct(&alerts, &expected_alerts, "alerts vs offline");
    assert_same_distinct(
        &payloads(&conversions),
        &lines(&expected.conversions),
        "conversions",
    );
    assert_eq!(dead.len(), 1, "the currency mismatch is dead-lettered");
    // A repeat gives the first record again; by event_id, each adjustment once.
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| support::field(r, "event_id"))
        .collect();
    let expected_ids: BTreeSet<String> = expected_records
        .iter()
        .map(|r| support::field(r, "event_id"))
        .collect();
    assert_eq!(ids, expected_ids);
    delete_prefix(&url, &prefix);
}

/// Sales with their adjustments a few records later, as a shop's stream looks.
fn interleaved(sales: usize) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let later = adjustments(sales);
    let mut pending = later.into_iter();
    for n in 0..sales {
        records.push(sale(n));
        if n % 3 == 2 {
            records.extend(pending.by_ref().take(2));
        }
    }
    records.extend(pending);
    records
}

#[test]
fn killed_mid_batch_every_adjustment_once_and_never_beyond_the_original() {
    let names = Names::new("adjustments-killed");
    names.create_topics(1);
    let Setup {
        topic,
        url,
        prefix,
        settings,
        sets,
    } = setup(
        &names,
        "adjustments-killed",
        20,
        // The detectors too, for HIGH_REVERSAL_RATE's counts across the kill (one partition:
        // the stream sees the file's order).
        &[
            "detectors.enabled=true",
            "detectors.customer_hmac_key=test-key-0123456789",
        ],
    );
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let records = interleaved(600);
    let table = offline::load_table(
        settings.codes.codes_file.as_deref().expect("codes"),
        settings.codes.partners_file.as_deref(),
        BuildOptions::default(),
    )
    .expect("table");
    let expected = offline::attribute_captured(&records.join(&b'\n'), "test", &table, &settings)
        .expect("offline");
    let expected_records = lines(&expected.adjustments);
    let expected_alerts = lines(&expected.alerts);
    let rate_alerts = expected_alerts
        .iter()
        .filter(|a| support::field(a, "kind") == "HIGH_REVERSAL_RATE")
        .count();
    assert!(rate_alerts >= 2, "the corpus reverses most of the amount");

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    // The last third goes in after the kill, so the kill lands before the work is done.
    let (before_kill, after_kill) = records.split_at(records.len() * 2 / 3);
    produce(&names.input, before_kill);
    let mut first = support::ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let early = support::read(&topic, 1, Duration::from_secs(90));
    assert!(
        !early.is_empty(),
        "first adjustments; log:\n{}",
        first.log_tail()
    );
    first.kill();
    produce(&names.input, after_kill);
    let mut second = support::ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let expected_ids: BTreeSet<String> = expected_records
        .iter()
        .map(|r| support::field(r, "event_id"))
        .collect();
    // By event_id, not by count: the aborted batch's records are visible copies on tansu, so a
    // count can be reached before the tail is written.
    let read = support::read_outputs(&topic, "event_id", &expected_ids, Duration::from_secs(90));
    let status = second.terminate(STOP);
    let isolation = read.isolation;
    let written = payloads(&read.settled());
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "drains; log:\n{}",
        second.log_tail()
    );

    assert_same_distinct(&written, &expected_records, "adjustments vs offline");
    // The alerts a redone batch writes again are the same bytes: HIGH_REVERSAL_RATE's counts
    // did not count the redone reversals twice. Read for longer than the expected count, as
    // an aborted batch's copies may be visible.
    let alerts = payloads(&support::read_settled_as(
        &names.alerts,
        expected_alerts.len() * 3,
        isolation,
    ));
    assert_same_distinct(&alerts, &expected_alerts, "alerts vs offline");
    // Exactly once by event_id: every copy of an id is the same bytes.
    let mut by_id = std::collections::BTreeMap::new();
    for record in &written {
        let previous = by_id.insert(support::field(record, "event_id"), record.clone());
        assert!(
            previous.is_none_or(|p| &p == record),
            "one event_id, two contents"
        );
    }
    let expected_ids: BTreeSet<String> = expected_records
        .iter()
        .map(|r| support::field(r, "event_id"))
        .collect();
    assert_eq!(
        by_id.len(),
        expected_ids.len(),
        "a repeat is its first record again"
    );
    // Cumulative deltas never beyond the original amount (in cents: the corpus has 2 places).
    let cents = |v: &serde_json::Value| (v.as_f64().unwrap_or(0.0) * 100.0).round() as i64;
    let mut reversed: std::collections::BTreeMap<String, i64> = Default::default();
    for record in by_id.values() {
        let v: serde_json::Value = serde_json::from_slice(record).expect("json");
        *reversed.entry(v["order_id"].to_string()).or_default() -= cents(&v["amount_delta"]);
    }
    for (order, total) in reversed {
        let n: usize = order.trim_matches('"')[2..].parse().expect("S-n");
        let original = ((50 + n) * 100 + n % 100) as i64;
        assert!(total <= original, "{order}: {total} reversed of {original}");
    }
    delete_prefix(&url, &prefix);
}
