//! `replay`, `dlq replay` and `run --shadow` against the real broker and Redis, with real
//! workers (subprocesses of the built binary). Every test has its own topics and key prefix.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use promo_attribution::kafka::outputs::dlq_header;
use promo_attribution::kafka::tools::{self, Isolation, RawRecord, RecordProducer};
use support::store::{binary, codes, import_samples, ok, order, produce, spawn_worker, store_sets};
use support::{
    ChildWorker, Names, assert_same_records, brokers, field, orders, payloads, read, read_settled,
    redis_url, text, unique_prefix, wait_for_keys, wait_for_orders,
};

const WAIT: Duration = Duration::from_secs(60);

fn replay(names: &Names, args: &[&str]) -> Output {
    binary()
        .arg("replay")
        .args(["--brokers", brokers(), "--topic", &names.input])
        .args(args)
        .env_remove("PROMO__STORE__REDIS_URL")
        .output()
        .expect("run promo-attribution replay")
}

/// `replay` deciding with store version `version` under `prefix`.
fn replay_version(names: &Names, prefix: &str, version: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--table-version",
        version,
        "--redis-url",
        redis_url(),
        "--prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    replay(names, &args)
}

/// Stdout of a run that must have exited with `code`.
fn exited(output: &Output, code: i32) -> String {
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&output.stderr)
    );
    stdout
}

fn verify_args(names: &Names) -> Vec<String> {
    vec![
        "--verify-topic".into(),
        names.conversions.clone(),
        "--verify-alerts-topic".into(),
        names.alerts.clone(),
        "--verify-dlq-topic".into(),
        names.dlq.clone(),
    ]
}

/// Topics, a store prefix with the sample table imported as version 1, and a temp dir.
fn store_test(test: &str) -> (&'static str, String, Names, tempfile::TempDir) {
    let url = redis_url();
    let prefix = unique_prefix(test);
    let names = Names::new(test);
    names.create_topics(2);
    import_samples(url, &prefix);
    (url, prefix, names, tempfile::tempdir().expect("temp dir"))
}

fn read_input(names: &Names) -> Vec<RawRecord> {
    tools::read_all(brokers(), &names.input, Isolation::ReadCommitted, WAIT)
        .expect("read the input")
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn stop(mut worker: ChildWorker) {
    let status = worker.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "worker did not drain: {status:?}\n{}",
        worker.log_tail()
    );
}

#[test]
fn replay_with_the_version_in_force_reproduces_the_worker_byte_for_byte() {
    let (url, prefix, names, dir) = store_test("replay-same");
    let worker = spawn_worker(
        &names,
        &store_sets(url, &prefix, &[]),
        &dir.path().join("w.log"),
    );
    let mut records = orders("RS", 80, 14);
    records.push(b"{\"order_id\": broken".to_vec());
    produce(&names, &records);
    let ids = support::order_ids(&records[..80]);
    let conversions = wait_for_orders(&names.conversions, &ids, WAIT);
    assert!(
        read(&names.dlq, 1, WAIT).len() == 1,
        "{}",
        worker.log_tail()
    );
    stop(worker);
    let conversions = payloads(&read_settled(&names.conversions, conversions.len()));
    assert_eq!(conversions.len(), 80, "one conversion per order");

    let out_dir = dir.path().join("replay");
    let out_path = out_dir.display().to_string();
    let verify = verify_args(&names);
    let mut args = vec!["--output-dir", &out_path];
    args.extend(verify.iter().map(String::as_str));
    let stdout = exited(&replay_version(&names, &prefix, "1", &args), 0);
    assert!(
        stdout.contains(
            "summary: 81 records: 81 identical, 0 same decision with another table, 0 decision changed, 0 missing, 0 extra, 0 not comparable (stateful detectors), 0 unchecked"
        ),
        "{stdout}"
    );
    // The files hold the same bytes the worker wrote.
    assert_same_records(
        &lines(&out_dir.join("conversions.jsonl")),
        &conversions,
        "conversions",
    );
    let alerts = lines(&out_dir.join("alerts.jsonl"));
    assert!(
        !alerts.is_empty(),
        "the random orders raise per-order alerts"
    );
    let worker_alerts = payloads(&read_settled(&names.alerts, alerts.len()));
    assert_same_records(&alerts, &worker_alerts, "alerts");
    let to_topic = format!("{}.replayed", names.input);
    let produced = replay_version(
        &names,
        &prefix,
        "1",
        &[
            "--to-topic",
            &to_topic,
            "--from-time",
            "2000-01-01T00:00:00Z",
            "--to-time",
            "2100-01-01T00:00:00Z",
        ],
    );
    exited(&produced, 0);
    assert!(
        text(&produced.stderr).contains("replayed 81 records"),
        "the time range holds every record: {}",
        text(&produced.stderr)
    );
    let replayed = payloads(&read_settled(&format!("{to_topic}.conversions"), 80));
    assert_same_records(
        &replayed,
        &conversions,
        "conversions produced by the replay",
    );
    let future = replay(
        &names,
        &[
            "--codes",
            &support::codes_csv().display().to_string(),
            "--from-time",
            "2100-01-01T00:00:00Z",
        ],
    );
    assert!(
        text(&future.stderr).contains("replayed 0 records"),
        "{}",
        text(&future.stderr)
    );
    let rejected = lines(&out_dir.join("rejected.jsonl"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(field(&rejected[0], "reason"), "malformed_json");

    // A range: one partition, from an offset; only its records are replayed.
    let partial = replay_version(
        &names,
        &prefix,
        "1",
        &[
            "--partition",
            "0",
            "--from-offset",
            "5",
            "--verify-topic",
            &names.conversions,
        ],
    );
    let stdout = exited(&partial, 0);
    let on_zero = read_input(&names)
        .iter()
        .filter(|r| r.partition == 0 && r.offset >= 5)
        .count();
    assert!(
        stdout.contains(&format!("summary: {on_zero} records: ")),
        "{on_zero} records expected:\n{stdout}"
    );
    // A range past the end is an error, not a short read.
    let past = replay_version(
        &names,
        &prefix,
        "1",
        &["--partition", "0", "--to-offset", "100000"],
    );
    exited(&past, 2);
    assert!(
        text(&past.stderr).contains("range past the end"),
        "{}",
        text(&past.stderr)
    );
}

#[test]
fn replay_with_an_older_version_reports_exactly_the_orders_whose_decision_changed() {
    let (url, prefix, names, dir) = store_test("replay-older");
    let expired = ok(&codes(url, &prefix, &["expire", "ANNA10"]));
    assert!(expired.contains("published version 2"), "{expired}");
    let worker = spawn_worker(
        &names,
        &store_sets(url, &prefix, &[]),
        &dir.path().join("w.log"),
    );
    let mut records = Vec::new();
    let mut anna = BTreeSet::new();
    for (tag, code) in [
        ("A", "anna10"),
        ("P", "PODCAST15"),
        ("D", "DEALS20"),
        ("N", "NOPE"),
    ] {
        for i in 0..5 {
            let id = format!("{tag}-{i}");
            if tag == "A" {
                anna.insert(id.clone());
            }
            records.push(order(&id, code));
        }
    }
    produce(&names, &records);
    let ids = support::order_ids(&records);
    let written = wait_for_orders(&names.conversions, &ids, WAIT);
    stop(worker);
    for payload in payloads(&written) {
        assert!(field(&payload, "code_table_version").starts_with("2-"));
    }

    let verify = verify_args(&names);
    let verify: Vec<&str> = verify.iter().map(String::as_str).collect();
    let stdout = exited(&replay_version(&names, &prefix, "1", &verify), 1);
    let changed: BTreeSet<String> = stdout
        .lines()
        .filter(|l| l.contains(": decision changed: "))
        .filter_map(|l| {
            l.split(" order ")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(changed, anna, "exactly the ANNA10 orders:\n{stdout}");
    assert!(
        stdout.contains("20 records: 0 identical, 15 same decision with another table, 5 decision changed, 0 missing, 0 extra"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("order A-0 "))
        .unwrap_or_default();
    assert!(
        // Expired, ANNA10 no longer credits its owner: the click winner is credited instead,
        // and the worker raised INACTIVE_CODE_USED, which version 1 does not.
        line.contains("basis \"CLICK\" → \"CODE_ALWAYS\"")
            && line.contains("alert INACTIVE_CODE_USED written by the worker, not raised now"),
        "worker's value → replay's value: {line}"
    );

    let stdout = exited(&replay_version(&names, &prefix, "2", &verify), 0);
    assert!(stdout.contains("20 records: 20 identical"), "{stdout}");
}

#[test]
fn decisions_of_the_stateful_detectors_are_reported_as_not_comparable() {
    let (url, prefix, names, dir) = store_test("replay-detectors");
    let sets = store_sets(
        url,
        &prefix,
        &[
            "detectors.enabled=true",
            "detectors.customer_hmac_key=replay-test-key-0123456789",
        ],
    );
    let worker = spawn_worker(&names, &sets, &dir.path().join("w.log"));
    let mut records: Vec<Vec<u8>> = (0..10)
        .map(|i| order(&format!("S-{i}"), "PODCAST15"))
        .collect();
    // The same order id with other content: the detectors make it DUPLICATE_ORDER_ID.
    records.push(order("S-0", "DEALS20"));
    produce(&names, &records);
    let ids = support::order_ids(&records);
    let written = wait_for_keys(&names.conversions, "event_id", &event_ids(&records), WAIT);
    stop(worker);
    assert_eq!(support::group_by(&written, "order_id").len(), ids.len());
    let reasons: Vec<String> = payloads(&written)
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .filter_map(|v| v["invalid_reason"].as_str().map(str::to_string))
        .collect();
    let duplicates = reasons
        .iter()
        .filter(|r| *r == "DUPLICATE_ORDER_ID")
        .count();
    assert_eq!(duplicates, 1, "{reasons:?}");

    let verify = verify_args(&names);
    let verify: Vec<&str> = verify.iter().map(String::as_str).collect();
    let stdout = exited(&replay_version(&names, &prefix, "1", &verify), 0);
    assert!(
        stdout.contains("11 records: 10 identical, 0 same decision with another table, 0 decision changed, 0 missing, 0 extra, 1 not comparable (stateful detectors)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("order S-0 ")
            && stdout.contains("DUPLICATE_ORDER_ID, a stateful detector's decision"),
        "{stdout}"
    );
    let detector_alerts = stdout
        .split("unchecked; ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        detector_alerts.is_some_and(|n| n >= 1),
        "the duplicate's alert is counted: {stdout}"
    );
}

fn event_ids(records: &[Vec<u8>]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| promo_attribution::ids::conversion_event_id(r))
        .collect()
}

#[test]
fn dlq_replay_sends_a_fixed_poison_record_back_and_a_dry_run_sends_nothing() {
    let names = Names::new("dlq-replay");
    names.create_topics(1);
    let dir = tempfile::tempdir().expect("temp dir");
    // The poison: two codes, while this worker allows one per order.
    let strict = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &["limits.max_codes_per_order=1"],
        &dir.path().join("strict.log"),
    );
    let good: Vec<Vec<u8>> = (0..3).map(|i| order(&format!("G-{i}"), "ANNA10")).collect();
    produce(&names, &good);
    let poison = RawRecord {
        partition: -1,
        offset: -1,
        timestamp: None,
        key: Some(b"POISON".to_vec()),
        payload: Some(
            String::from_utf8(order("POISON", "ANNA10"))
                .expect("utf8")
                .replace(r#"["ANNA10"]"#, r#"["ANNA10","DEALS20"]"#)
                .into_bytes(),
        ),
        headers: vec![("trace-id".into(), Some(b"t-42".to_vec()))],
    };
    let producer = RecordProducer::new(brokers()).expect("producer");
    producer
        .send_raw(&names.input, std::slice::from_ref(&poison))
        .expect("produce the poison");
    wait_for_orders(&names.conversions, &support::order_ids(&good), WAIT);
    let letters = read(&names.dlq, 1, WAIT);
    assert_eq!(letters.len(), 1, "{}", strict.log_tail());
    assert_eq!(letters[0].headers[dlq_header::REASON], b"too_many_codes");
    stop(strict);

    let dlq = |extra: &[&str]| {
        binary()
            .args(["dlq", "replay", "--brokers", brokers()])
            .args(["--dlq-topic", &names.dlq, "--to-topic", &names.input])
            .args(extra)
            .output()
            .expect("run dlq replay")
    };
    let input_len = || read_input(&names).len();
    assert_eq!(input_len(), 4);
    let stdout = exited(&dlq(&["--dry-run"]), 0);
    assert!(
        stdout.contains("dry run: would send 1 of 1")
            && stdout.contains("too_many_codes: 1")
            && stdout.contains("keys: POISON"),
        "{stdout}"
    );
    let none = exited(&dlq(&["--reason", "malformed_json"]), 0);
    assert!(none.contains("sent 0 of 1"), "{none}");
    assert_eq!(
        input_len(),
        4,
        "neither the dry run nor a non-matching reason sent anything"
    );

    // The fix: a worker with the default limit; then the dead letter goes back.
    let fixed = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &[],
        &dir.path().join("fixed.log"),
    );
    let stdout = exited(&dlq(&["--reason", "too_many_codes"]), 0);
    assert!(stdout.contains("sent 1 of 1"), "{stdout}");
    let all = BTreeSet::from(["POISON".to_string()]);
    let converted = wait_for_orders(&names.conversions, &all, WAIT);
    let poison_conversion = payloads(&converted)
        .into_iter()
        .find(|p| field(p, "order_id") == "POISON")
        .unwrap_or_else(|| panic!("POISON not converted:\n{}", fixed.log_tail()));
    assert_eq!(field(&poison_conversion, "status"), "CREDITED");
    stop(fixed);

    let input = read_input(&names);
    let resent = input.last().expect("the resent record");
    assert_eq!(resent.key, poison.key);
    assert_eq!(resent.payload, poison.payload);
    assert_eq!(
        resent.headers, poison.headers,
        "the record's own headers, none of ours"
    );
}

#[test]
fn a_shadow_worker_writes_the_same_decisions_to_shadow_topics_without_detector_state() {
    let url = redis_url();
    let prefix = unique_prefix("shadow");
    let names = Names::new("shadow");
    names.create_topics(2);
    let shadow_topics: Vec<String> = [&names.conversions, &names.alerts, &names.dlq]
        .iter()
        .map(|t| format!("{t}.shadow"))
        .collect();
    let refs: Vec<&str> = shadow_topics.iter().map(String::as_str).collect();
    tools::create_topics(brokers(), &refs, 3).expect("create the shadow topics");
    let dir = tempfile::tempdir().expect("temp dir");
    let production = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &[],
        &dir.path().join("p.log"),
    );
    // The shadow is asked for the detectors, with a store it could write to: it must not.
    let redis_url_set = format!("store.redis_url={url}");
    let prefix_set = format!("store.key_prefix={prefix}");
    let shadow = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &[
            "kafka.shadow=true",
            "detectors.enabled=true",
            "detectors.customer_hmac_key=shadow-test-key-0123456789",
            &redis_url_set,
            &prefix_set,
        ],
        &dir.path().join("s.log"),
    );
    let records = orders("SH", 60, 7);
    produce(&names, &records);
    let ids = support::order_ids(&records);
    wait_for_orders(&names.conversions, &ids, WAIT);
    let shadowed = wait_for_orders(&shadow_topics[0], &ids, WAIT);
    assert_eq!(
        support::group_by(&shadowed, "order_id").len(),
        ids.len(),
        "{}",
        shadow.log_tail()
    );
    stop(shadow);
    stop(production);
    let live = payloads(&read_settled(&names.conversions, ids.len()));
    let shadowed = payloads(&read_settled(&shadow_topics[0], ids.len()));
    assert_same_records(&shadowed, &live, "shadow conversions");
    let expected =
        support::offline_reference(&records, &names.settings(&names.transactional_id, &[]));
    assert!(!expected.alerts.is_empty(), "the orders raise alerts");
    let live_alerts = payloads(&read_settled(&names.alerts, expected.alerts.len()));
    assert_same_records(&live_alerts, &expected.alerts, "production alerts");
    let shadow_alerts = payloads(&read_settled(&shadow_topics[1], live_alerts.len()));
    assert_same_records(&shadow_alerts, &live_alerts, "shadow alerts");

    let mut redis = support::store::redis_connection(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut redis)
        .expect("list keys");
    assert!(keys.is_empty(), "the shadow wrote detector state: {keys:?}");

    // --shadow is the same switch, and --check-config shows what it runs with.
    let config = exited(
        &binary()
            .args(["run", "--shadow", "--check-config", "--group", "g"])
            .args(["--transactional-id", "t"])
            .output()
            .expect("run --check-config"),
        0,
    );
    for expected in [
        "group_id = \"g.shadow\"",
        "transactional_id = \"t.shadow\"",
        "conversions_topic = \"promo.conversions.shadow\"",
        "input_topic = \"orders\"",
        "shadow = false",
    ] {
        assert!(config.contains(expected), "{expected} in:\n{config}");
    }
}
