//! The detectors' replay safety through the real pipeline: a worker killed mid-batch and
//! restarted repeats no state change and loses no alert; with Redis down or hung nothing is
//! decided (nothing skipped) until it is back; two workers on many partitions share one count.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::redis::{
    PrivateRedis, assert_same_distinct, detector_sets, offline_run, outputs_after, produce, shared,
    vip_uses, zcard,
};
use support::{InProcessWorker, Names, field, order_ids, orders, read, wait_for_orders};

const DEADLINE: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(30);

#[test]
fn killed_worker_repeats_no_state_change_and_loses_no_alert() {
    support::redis::killed_worker_counts_each_use_once(support::redis_url(), "detectors-killed");
}

#[test]
fn killed_worker_on_the_cluster_counts_each_use_once() {
    let _cluster = support::cluster_lock(false);
    support::redis::killed_worker_counts_each_use_once(
        support::redis_cluster_url(),
        "detectors-killed-cluster",
    );
}

#[test]
fn redis_down_or_hung_decides_nothing_until_it_is_back() {
    let names = Names::new("detectors-outage");
    names.create_topics(1);
    let mut redis = PrivateRedis::reserve();
    let prefix = support::unique_prefix("outage");
    let mut extra = detector_sets(&redis.url(), &prefix);
    extra.push("worker.max_backoff_ms=500".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let settings = names.settings(&names.transactional_id, &extra);
    let first = orders("OA", 200, 21);
    let second = orders("OB", 200, 22);
    let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    let (expected_conversions, expected_alerts) = offline_run(&all, &settings);

    // Down from the start: the worker runs, reads, and decides nothing.
    let worker = InProcessWorker::start(settings);
    produce(&names.input, &first);
    let none = read(&names.conversions, 1, Duration::from_secs(6));
    assert!(none.is_empty(), "a conversion without the detectors");
    assert!(worker.metric("promo_transactions_total{outcome=\"aborted\"}") >= 1.0);
    assert!(worker.metric("promo_detector_step_failures_total") >= 1.0);
    redis.start();
    wait_for_orders(&names.conversions, &order_ids(&first), DEADLINE);

    // Hung (SIGSTOP): requests time out; nothing new is decided until it answers again.
    redis.pause(true);
    produce(&names.input, &second);
    let before = read(&names.conversions, first.len() + 1, Duration::from_secs(6));
    let decided: BTreeSet<String> = before
        .iter()
        .map(|r| field(r.payload.as_deref().unwrap_or_default(), "order_id"))
        .collect();
    assert!(
        order_ids(&second).is_disjoint(&decided),
        "an order decided while Redis was hung"
    );
    redis.pause(false);
    let (conversions, alerts) =
        outputs_after(&names, &order_ids(&all), &expected_alerts, DEADLINE, || {
            assert!(worker.stop(STOP).is_ok(), "worker drains");
        });
    assert_same_distinct(&conversions, &expected_conversions, "conversions");
    assert_same_distinct(&alerts, &expected_alerts, "alerts");
}

#[test]
fn workers_on_many_partitions_share_one_count() {
    let names = Names::new("detectors-shared");
    names.create_topics(4);
    let records = orders("DS", 1200, 31);
    let (url, prefix) = shared("detectors-shared");
    let sets = detector_sets(&url, &prefix);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let settings_a = names.settings(&format!("{}-a", names.transactional_id), &sets);
    let settings_b = names.settings(&format!("{}-b", names.transactional_id), &sets);
    let (expected_conversions, expected_alerts) = offline_run(&records, &settings_a);

    let a = InProcessWorker::start(settings_a);
    let b = InProcessWorker::start(settings_b);
    let split = support::wait_until(Duration::from_secs(30), || {
        let (pa, pb) = (
            a.metric("promo_assigned_partitions"),
            b.metric("promo_assigned_partitions"),
        );
        pa > 0.0 && pb > 0.0 && pa + pb == 4.0
    });
    assert!(split, "both workers hold partitions");
    produce(&names.input, &records);
    let limit_ids: BTreeSet<String> = expected_alerts
        .iter()
        .filter(|a| field(a, "kind") == "SINGLE_USE_CODE_REUSED")
        .map(|a| field(a, "alert_id"))
        .collect();
    assert!(!limit_ids.is_empty(), "the corpus reuses single-use codes");
    let (conversions, alerts) = outputs_after(
        &names,
        &order_ids(&records),
        &expected_alerts,
        DEADLINE,
        || {
            assert!(
                a.stop(STOP).is_ok() && b.stop(STOP).is_ok(),
                "workers drain"
            );
        },
    );

    // Conversions do not depend on the arrival order (no limit invalidates by default).
    assert_same_distinct(&conversions, &expected_conversions, "conversions");
    // A limit alert is rewritten at each power of two of the excess, one use at a time, so its
    // highest count does not depend on the order either.
    let highest = |alerts: &[Vec<u8>]| -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for alert in alerts
            .iter()
            .filter(|a| limit_ids.contains(&field(a, "alert_id")))
        {
            let value: Value = serde_json::from_slice(alert).expect("json");
            let count = value["count"].as_u64().unwrap_or(0);
            let slot = out.entry(field(alert, "alert_id")).or_insert(0);
            *slot = count.max(*slot);
        }
        out
    };
    assert_eq!(highest(&alerts), highest(&expected_alerts));
    let (key, vip_orders) = vip_uses(&prefix, &records);
    assert_eq!(zcard(&url, &key), vip_orders, "each use counted once");
}
