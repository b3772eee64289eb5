//! The stream worker against a real Kafka-protocol broker (tansu, from `scripts/services up`):
//! the same bytes as the offline engine, partitions split across a group, a SIGKILL that loses
//! nothing, dead letters with their context, and a SIGTERM that drains.
//!
//! Every test has its own topics, group and transactional id, so the tests run in parallel.
//! tansu shows records of aborted transactions to read_committed readers (see
//! `/work/shared/reference/broker.md`), so where a crash is involved the tests check that every
//! repeat is byte-identical rather than that there is none.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use promo_attribution::kafka::WorkerExit;
use promo_attribution::kafka::tools;
use promo_attribution::settings::Settings;
use support::{
    ChildWorker, InProcessWorker, Names, assert_same_records, brokers, field, group_by, metric,
    multiset, offline_reference, order_ids, orders, payloads, read, read_outputs, read_settled,
    read_settled_many, text, wait_for_keys, wait_for_orders, wait_until,
};

const STOP_DEADLINE: Duration = Duration::from_secs(30);
const PROCESS_DEADLINE: Duration = Duration::from_secs(90);

fn produce(topic: &str, records: &[Vec<u8>]) {
    let produced =
        tools::produce_records(brokers(), topic, records).expect("produce the test records");
    assert_eq!(produced, records.len(), "every record produced");
}

/// One bad record of each kind the offline engine rejects, each unique by its `tag`.
fn poison_lines(tag: &str) -> Vec<Vec<u8>> {
    let codes: Vec<String> = (0..21).map(|i| format!("C{i}")).collect();
    vec![
        format!(r#"{{"order_id":"{tag}-json","program_id":"1001","event_type":"sale","event_time":not-json}}"#).into_bytes(),
        format!(r#"{{"order_id":{},"program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","tag":"{tag}"}}"#, 4242).into_bytes(),
        format!(r#"{{"order_id":"{tag}-missing","program_id":"1001","event_type":"sale"}}"#).into_bytes(),
        [
            format!(r#"{{"order_id":"{tag}-utf8","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":[""#).as_bytes(),
            b"\xff\xfeANNA10",
            br#""]}"#,
        ]
        .concat(),
        format!(r#"{{"order_id":"{tag}-time","program_id":"1001","event_type":"sale","event_time":"2026-05-10 12:00"}}"#).into_bytes(),
        format!(r#"{{"order_id":"{tag}-codes","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":{}}}"#, serde_json::json!(codes)).into_bytes(),
        format!(r#"{{"order_id":"{tag}-long","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["{}"]}}"#, "L".repeat(129)).into_bytes(),
        format!(r#"{{"schema_version":2,"order_id":"{tag}-version","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z"}}"#).into_bytes(),
        format!(r#"{{"order_id":" ","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","tag":"{tag}"}}"#).into_bytes(),
    ]
}

/// `good` with `bad` spread through it, one bad record every `good.len() / bad.len()` good ones.
fn interleave(good: Vec<Vec<u8>>, bad: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let every = (good.len() / bad.len().max(1)).max(1);
    let mut out = Vec::with_capacity(good.len() + bad.len());
    let mut bad = bad.iter();
    for (i, record) in good.into_iter().enumerate() {
        if i % every == every / 2
            && let Some(b) = bad.next()
        {
            out.push(b.clone());
        }
        out.push(record);
    }
    out.extend(bad.cloned());
    out
}

/// The conversions read, each order once: asserts every repeat of an order is byte-identical to
/// its first conversion, and returns (the first of each, the number of repeats).
fn dedup_identical(records: &[tools::ReadRecord], key: &str, what: &str) -> (Vec<Vec<u8>>, usize) {
    let mut firsts = Vec::new();
    let mut repeats = 0;
    for (id, copies) in group_by(records, key) {
        let first = &copies[0];
        for copy in &copies[1..] {
            assert_eq!(
                text(copy),
                text(first),
                "{what} {id} was written twice with different bytes"
            );
        }
        repeats += copies.len() - 1;
        firsts.push(first.clone());
    }
    (firsts, repeats)
}

#[test]
fn stream_matches_offline() {
    let t0 = Instant::now();
    let names = Names::new("matches-offline");
    names.create_topics(3);
    let records = interleave(orders("M", 400, 1), &poison_lines("M-bad"));
    let settings = names.settings(&names.transactional_id, &[]);
    let expected = offline_reference(&records, &settings);

    // The corpus exercises the rules, not just the happy path.
    let statuses = multiset(
        &expected
            .conversions
            .iter()
            .map(|c| field(c, "status"))
            .collect::<Vec<_>>(),
    );
    for status in ["CREDITED", "INVALID", "UNATTRIBUTED"] {
        assert!(
            statuses.get(status).copied().unwrap_or(0) >= 5,
            "corpus has too few {status}: {statuses:?}"
        );
    }
    let json: Vec<serde_json::Value> = expected
        .conversions
        .iter()
        .map(|c| serde_json::from_slice(c).expect("offline conversion is JSON"))
        .collect();
    for basis in ["CODE_ALWAYS", "CODE_INVOLVED", "CODE_WINNER", "CLICK"] {
        assert!(
            json.iter().any(|c| c["basis"] == basis),
            "corpus has no {basis} conversion"
        );
    }
    for match_type in ["EXACT", "REGEX"] {
        assert!(
            json.iter().any(|c| c["code"]["match_type"] == match_type),
            "corpus has no {match_type} code match"
        );
    }
    assert!(
        json.iter().any(|c| c["invalid_reason"] == "CODE_EXPIRED"),
        "corpus has no expired code"
    );
    let with_unknown = expected
        .conversions
        .iter()
        .filter(|c| !text(c).contains(r#""unknown_codes":[]"#))
        .count();
    assert!(with_unknown >= 5, "corpus has too few unknown codes");
    assert!(
        expected.alerts.len() >= 20,
        "corpus raises too few alerts: {}",
        expected.alerts.len()
    );
    assert_eq!(
        expected.summary.rejected_lines as usize,
        poison_lines("x").len(),
        "every poison line is rejected offline: {}",
        expected.summary
    );

    produce(&names.input, &records);
    let worker = InProcessWorker::start(settings);
    let seen = read(
        &names.conversions,
        expected.conversions.len(),
        PROCESS_DEADLINE,
    );
    assert_eq!(
        seen.len(),
        expected.conversions.len(),
        "conversions within {PROCESS_DEADLINE:?}; worker metrics:\n{}",
        worker.render()
    );
    // Poison records may sit behind the last good order of their partition: wait for them too.
    let dead = read(
        &names.dlq,
        expected.summary.rejected_lines as usize,
        PROCESS_DEADLINE,
    );
    assert_eq!(
        dead.len(),
        expected.summary.rejected_lines as usize,
        "dead letters within {PROCESS_DEADLINE:?}"
    );
    let metrics = worker.metrics.clone();
    assert_eq!(
        worker.stop(STOP_DEADLINE),
        Ok(WorkerExit::Drained),
        "worker drains"
    );
    let render = metrics.render().expect("metrics render");
    let consumed = metric(&render, "promo_orders_consumed_total").unwrap_or(0.0);
    let read_back = read_settled_many(&[
        (&names.conversions, expected.conversions.len()),
        (&names.alerts, expected.alerts.len()),
        (&names.dlq, expected.summary.rejected_lines as usize),
    ]);
    let aborted = metric(&render, r#"promo_transactions_total{outcome="aborted"}"#);
    assert_same_records(
        &payloads(&read_back[0]),
        &expected.conversions,
        &format!("conversions vs offline (aborted transactions: {aborted:?})"),
    );
    assert_same_records(
        &payloads(&read_back[1]),
        &expected.alerts,
        "alerts vs offline",
    );
    // The lines the offline run rejected are the dead letters, with the same reasons.
    let bad: Vec<Vec<u8>> = poison_lines("M-bad");
    assert_same_records(&payloads(&read_back[2]), &bad, "dead letters");
    let dlq_reasons: BTreeMap<String, u64> = multiset(
        &read_back[2]
            .iter()
            .map(|r| {
                text(
                    r.headers
                        .get("promo.dlq.reason")
                        .expect("dead letter has promo.dlq.reason"),
                )
            })
            .collect::<Vec<_>>(),
    )
    .into_iter()
    .map(|(k, v)| (k, v as u64))
    .collect();
    let offline_reasons: BTreeMap<String, u64> = expected
        .summary
        .rejected_by_reason
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(
        dlq_reasons, offline_reasons,
        "DLQ reasons = offline reasons"
    );
    assert_eq!(
        consumed as usize,
        records.len(),
        "each input record consumed once"
    );
    eprintln!(
        "stream_matches_offline: {} records, {} conversions, {} alerts, {} dead letters in {:?}",
        records.len(),
        expected.conversions.len(),
        expected.alerts.len(),
        bad.len(),
        t0.elapsed()
    );
}

/// A worker's transactions so far: (committed, aborted).
fn transactions(worker: &InProcessWorker) -> (f64, f64) {
    let count = |outcome: &str| {
        worker.metric(&format!(
            "promo_transactions_total{{outcome=\"{outcome}\"}}"
        ))
    };
    (count("committed"), count("aborted"))
}

#[test]
fn two_workers_split_partitions() {
    let t0 = Instant::now();
    let names = Names::new("two-workers");
    names.create_topics(4);
    let records = orders("W", 400, 2);
    let ids = order_ids(&records);
    let settings_a = names.settings(&format!("{}-a", names.transactional_id), &[]);
    let settings_b = names.settings(&format!("{}-b", names.transactional_id), &[]);
    let expected = offline_reference(&records, &settings_a);

    let mut a = InProcessWorker::start(settings_a);
    let mut b = InProcessWorker::start(settings_b);
    // Orders go in only once the group has settled on both members, so neither can take all
    // the work before the other joins, and no rebalance aborts a batch.
    let split = wait_until(Duration::from_secs(30), || {
        let (pa, pb) = (
            a.metric("promo_assigned_partitions"),
            b.metric("promo_assigned_partitions"),
        );
        pa > 0.0 && pb > 0.0 && pa + pb == 4.0
    });
    assert!(
        split,
        "both workers hold partitions of the 4 within 30 s: a={} b={} (a ended: {:?}, b ended: {:?})",
        a.metric("promo_assigned_partitions"),
        b.metric("promo_assigned_partitions"),
        a.finished_early(),
        b.finished_early()
    );
    let assigned = (
        a.metric("promo_assigned_partitions"),
        b.metric("promo_assigned_partitions"),
    );
    produce(&names.input, &records);
    let outputs = read_outputs(&names.conversions, "order_id", &ids, PROCESS_DEADLINE);
    let seen: BTreeSet<String> = group_by(outputs.records(), "order_id")
        .into_keys()
        .collect();
    assert_eq!(
        seen,
        ids,
        "conversions within the deadline; the test's reader got offsets {}; transactions (committed, aborted): a {:?}, b {:?}; diagnosis:\n{}",
        support::offset_runs(outputs.records()),
        transactions(&a),
        transactions(&b),
        support::diagnose(&names, 4, &ids)
    );
    let (metrics_a, metrics_b) = (a.metrics.clone(), b.metrics.clone());
    assert_eq!(a.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));
    assert_eq!(b.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));
    let consumed_by = |metrics: &promo_attribution::metrics::Metrics| {
        metric(
            &metrics.render().expect("metrics render"),
            "promo_orders_consumed_total",
        )
        .unwrap_or(0.0)
    };
    let consumed = (consumed_by(&metrics_a), consumed_by(&metrics_b));

    assert!(
        consumed.0 > 0.0 && consumed.1 > 0.0,
        "both workers processed orders: {consumed:?}"
    );
    assert_eq!(
        consumed.0 + consumed.1,
        records.len() as f64,
        "each order consumed by exactly one worker, once: {consumed:?}"
    );
    let all = outputs.settled();
    let by_order = group_by(&all, "order_id");
    let repeated: Vec<(&String, usize)> = by_order
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(id, c)| (id, c.len()))
        .collect();
    assert!(
        repeated.is_empty(),
        "orders converted more than once: {repeated:?}"
    );
    assert_eq!(
        by_order.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every order converted"
    );
    assert_same_records(
        &payloads(&all),
        &expected.conversions,
        "conversions vs offline",
    );
    eprintln!(
        "two_workers_split_partitions: partitions {assigned:?}, consumed {consumed:?}, in {:?}",
        t0.elapsed()
    );
}

/// Produces a corpus at a steady pace while the test waits for the group to change, so that
/// records keep flowing (and batches keep committing) while partitions move.
struct Feeder<'a> {
    producer: rdkafka::producer::BaseProducer,
    topic: &'a str,
    records: &'a [Vec<u8>],
    next: usize,
}

impl<'a> Feeder<'a> {
    /// Records sent per step; a step lasts one 10 ms producer poll, so about 300 orders/s: the
    /// corpus lasts through the joins and leaves (a few seconds each on tansu).
    const CHUNK: usize = 3;

    fn new(topic: &'a str, records: &'a [Vec<u8>]) -> Feeder<'a> {
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "1")
            .set("enable.idempotence", "true")
            .create()
            .expect("feeder producer");
        Feeder {
            producer,
            topic,
            records,
            next: 0,
        }
    }

    fn send_chunk(&mut self) {
        use rdkafka::producer::BaseRecord;
        let end = (self.next + Self::CHUNK).min(self.records.len());
        for payload in &self.records[self.next..end] {
            let key = field(payload, "order_id");
            let record = BaseRecord::to(self.topic).key(&key).payload(payload);
            self.producer
                .send(record)
                .map_err(|(e, _)| e)
                .expect("feeder send");
        }
        self.next = end;
        self.producer.poll(Duration::from_millis(10));
    }

    /// Feeds until `condition` holds or `timeout` passes; once the corpus is used up it only
    /// waits. Returns whether the condition held.
    fn feed_until(&mut self, timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while self.next < self.records.len() {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.send_chunk();
        }
        self.flush();
        wait_until(
            deadline.saturating_duration_since(Instant::now()),
            condition,
        )
    }

    fn rest(&mut self) {
        while self.next < self.records.len() {
            self.send_chunk();
        }
        self.flush();
    }

    fn flush(&self) {
        use rdkafka::producer::Producer;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
        assert_eq!(
            self.producer.in_flight_count(),
            0,
            "feeder records acknowledged"
        );
    }
}

/// Members join and leave while orders flow and batches are small, so partitions are revoked
/// while batches are open and commits are in flight: no order may be lost or stall, and none
/// converted twice unless a batch was aborted (then only byte-identical repeats).
#[test]
fn rebalance_during_commits_loses_nothing() {
    let t0 = Instant::now();
    let names = Names::new("rebalance");
    const PARTITIONS: i32 = 6;
    names.create_topics(PARTITIONS);
    // Sized for a tansu that has run for hours: it writes its whole transaction table on every
    // transactional request, so commits slow down as test runs add transactional ids (0.25 to
    // 2.5 s each were seen); 6,000 orders in batches of up to 50 still finish well within the
    // deadline there.
    let records = orders("R", 6000, 12);
    let ids = order_ids(&records);
    let small = ["kafka.batch_max_records=50"];
    let member = |tag: &str| {
        InProcessWorker::start(names.settings(&format!("{}-{tag}", names.transactional_id), &small))
    };
    let expected = offline_reference(&records, &names.settings(&names.transactional_id, &[]));
    let assigned = |w: &InProcessWorker| w.metric("promo_assigned_partitions");
    let total = f64::from(PARTITIONS);

    let a = member("a");
    let b = member("b");
    assert!(
        wait_until(Duration::from_secs(30), || assigned(&a) + assigned(&b)
            == total
            && assigned(&a) > 0.0
            && assigned(&b) > 0.0),
        "a and b share the partitions"
    );
    let mut feeder = Feeder::new(&names.input, &records);
    let mut timeline = Vec::new();
    // A third member joins: a and b give up partitions with batches open.
    let c = member("c");
    assert!(
        feeder.feed_until(Duration::from_secs(30), || assigned(&c) > 0.0),
        "c gets partitions"
    );
    timeline.push(("c joined", feeder.next, t0.elapsed()));
    // It leaves again: its drain commits while a and b take its partitions over.
    c.request_stop();
    assert!(
        feeder.feed_until(Duration::from_secs(30), || assigned(&a) + assigned(&b)
            == total),
        "a and b take c's partitions back"
    );
    let c_metrics = c.metrics.clone();
    assert_eq!(c.stop(STOP_DEADLINE), Ok(WorkerExit::Drained), "c drains");
    timeline.push(("c left", feeder.next, t0.elapsed()));
    // A fourth joins and stays.
    let d = member("d");
    assert!(
        feeder.feed_until(Duration::from_secs(30), || assigned(&d) > 0.0),
        "d gets partitions"
    );
    timeline.push(("d joined", feeder.next, t0.elapsed()));
    feeder.rest();

    let outputs = read_outputs(&names.conversions, "order_id", &ids, PROCESS_DEADLINE);
    let seen: BTreeSet<String> = group_by(outputs.records(), "order_id")
        .into_keys()
        .collect();
    let missing: Vec<&String> = ids.difference(&seen).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} orders without a conversion within {PROCESS_DEADLINE:?} (first 10: {missing:?}); timeline {timeline:?}; diagnosis:\n{}\nmetrics a:\n{}\nmetrics b:\n{}\nmetrics d:\n{}",
        ids.difference(&seen).count(),
        support::diagnose(&names, PARTITIONS, &ids),
        a.render(),
        b.render(),
        d.render()
    );
    let metrics: Vec<_> = [&a, &b, &d]
        .iter()
        .map(|w| w.metrics.clone())
        .chain([c_metrics])
        .collect();
    for w in [a, b, d] {
        assert_eq!(w.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));
    }
    let all = outputs.settled();
    let (firsts, repeats) = dedup_identical(&all, "order_id", "conversion of order");
    assert_same_records(
        &firsts,
        &expected.conversions,
        "distinct conversions vs offline",
    );
    let aborted: f64 = metrics
        .iter()
        .map(|m| {
            metric(
                &m.render().expect("metrics render"),
                r#"promo_transactions_total{outcome="aborted"}"#,
            )
            .unwrap_or(0.0)
        })
        .sum();
    // Repeats are allowed here if byte-identical: tansu shows aborted records to read_committed
    // readers, and a transaction it leaves unfinished (see `read_outputs`) commits its input
    // offsets only later, so a member that takes the partition over meanwhile reads those
    // records again. On Apache Kafka a run without aborts has none.
    eprintln!(
        "rebalance_during_commits_loses_nothing: {} orders, {repeats} repeats, {aborted} aborted \
         transactions, timeline {timeline:?}, in {:?}",
        records.len(),
        t0.elapsed()
    );
}

#[test]
fn killed_worker_loses_nothing() {
    let t0 = Instant::now();
    let names = Names::new("killed");
    names.create_topics(3);
    let records = orders("K", 3000, 3);
    let ids = order_ids(&records);
    let expected = offline_reference(&records, &Settings::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    let sets = ["kafka.batch_max_records=50"];
    // The last third goes in only after the kill: however fast the first worker is, it cannot
    // have finished everything before the kill lands.
    let (before_kill, after_kill) = records.split_at(records.len() * 2 / 3);
    produce(&names.input, before_kill);

    let mut first = ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let early = read(&names.conversions, 1, PROCESS_DEADLINE);
    assert!(
        !early.is_empty(),
        "first conversions within {PROCESS_DEADLINE:?}; log:\n{}",
        first.log_tail()
    );
    assert_eq!(
        first.exited(),
        None,
        "worker still running before the kill; log:\n{}",
        first.log_tail()
    );
    first.kill();
    let at_kill = read(&names.conversions, records.len(), Duration::from_secs(2)).len();
    produce(&names.input, after_kill);

    let mut second = ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let all = wait_for_orders(&names.conversions, &ids, PROCESS_DEADLINE);
    let status = second.terminate(STOP_DEADLINE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "restarted worker drains on SIGTERM; log:\n{}",
        second.log_tail()
    );
    let all = read_settled(&names.conversions, all.len());

    let seen: BTreeSet<String> = group_by(&all, "order_id").into_keys().collect();
    let missing: Vec<&String> = ids.difference(&seen).take(10).collect();
    assert!(
        missing.is_empty(),
        "orders without a conversion after the restart (first 10): {missing:?}; log:\n{}",
        second.log_tail()
    );
    let (firsts, repeats) = dedup_identical(&all, "order_id", "conversion of order");
    assert_same_records(
        &firsts,
        &expected.conversions,
        "distinct conversions vs offline",
    );

    // Alerts repeat too (an aborted batch's alerts stay visible on tansu), so wait for every
    // alert id rather than for a count.
    let alert_ids: BTreeSet<String> = expected
        .alerts
        .iter()
        .map(|a| field(a, "alert_id"))
        .collect();
    let alerts = wait_for_keys(
        &names.alerts,
        "alert_id",
        &alert_ids,
        Duration::from_secs(30),
    );
    let alerts = read_settled(&names.alerts, alerts.len());
    let (distinct_alerts, alert_repeats) = dedup_identical(&alerts, "alert_id", "alert");
    let mut expected_alerts = expected.alerts.clone();
    expected_alerts.sort();
    expected_alerts.dedup();
    assert_same_records(
        &distinct_alerts,
        &expected_alerts,
        "distinct alerts vs offline",
    );
    eprintln!(
        "killed_worker_loses_nothing: {} orders, {at_kill} conversions visible at the kill, \
         {} conversion records in the end ({repeats} repeats, all byte-identical), \
         {alert_repeats} repeated alerts, in {:?}",
        records.len(),
        all.len(),
        t0.elapsed()
    );
}

#[test]
fn poison_goes_to_dlq() {
    let names = Names::new("poison");
    names.create_topics(3);
    let settings = names.settings(&names.transactional_id, &["limits.max_message_bytes=2000"]);
    let max_codes = settings.limits.max_codes_per_order;
    let max_code_bytes = settings.limits.max_code_bytes;
    let codes: Vec<String> = (0..=max_codes).map(|i| format!("C{i}")).collect();
    let order = |id: &str, extra: &str| {
        format!(
            r#"{{"order_id":"{id}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z"{extra}}}"#
        )
        .into_bytes()
    };
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed_json",
            br#"{"order_id":"P-json","program_id":"1001","event_type":"sale","#.to_vec(),
        ),
        (
            "schema_violation",
            br#"{"order_id":17,"program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z"}"#.to_vec(),
        ),
        (
            "schema_violation",
            br#"{"order_id":"P-missing","program_id":"1001","event_type":"sale"}"#.to_vec(),
        ),
        (
            "invalid_utf8",
            [&order("P-utf8", "")[..40], b"\xc3\x28", &order("P-utf8", "")[40..]].concat(),
        ),
        (
            "oversize",
            order("P-big", &format!(r#","note":"{}""#, "x".repeat(2100))),
        ),
        (
            "too_many_codes",
            order("P-codes", &format!(r#","promo_codes":{}"#, serde_json::json!(codes))),
        ),
        (
            "code_too_long",
            order(
                "P-long",
                &format!(r#","promo_codes":["ANNA10","{}"]"#, "L".repeat(max_code_bytes + 1)),
            ),
        ),
        (
            "field_too_long",
            order("P-click", &format!(
                r#","touchpoints":[{{"partner_id":"2001","click_id":"{}","ts":"2026-05-09T08:00:00Z"}}]"#,
                "K".repeat(settings.limits.max_id_bytes + 1)
            )),
        ),
        // A zero-length value (not a null one: `produce_records` cannot send a tombstone);
        // both are dead-lettered as `empty_record`.
        ("empty_record", Vec::new()),
    ];
    let good = orders("P", 80, 4);
    let bad: Vec<Vec<u8>> = poison.iter().map(|(_, r)| r.clone()).collect();
    let records = interleave(good.clone(), &bad);
    let expected = offline_reference(&good, &settings);
    produce(&names.input, &records);
    let connector = settings.kafka.group_id.clone();
    let task = settings.kafka.effective_transactional_id();

    let worker = InProcessWorker::start(settings);
    let dead = read(&names.dlq, poison.len(), PROCESS_DEADLINE);
    assert_eq!(
        dead.len(),
        poison.len(),
        "dead letters within the deadline; metrics:\n{}",
        worker.render()
    );
    let converted = read(&names.conversions, good.len(), PROCESS_DEADLINE);
    assert_eq!(converted.len(), good.len(), "good orders converted");
    let render = worker.render();
    assert_eq!(worker.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));

    let [input, dead, conversions]: [Vec<tools::ReadRecord>; 3] = read_settled_many(&[
        (&names.input, records.len()),
        (&names.dlq, poison.len()),
        (&names.conversions, good.len()),
    ])
    .try_into()
    .expect("three topics read");
    assert_eq!(input.len(), records.len(), "the input reads back whole");
    assert_eq!(dead.len(), poison.len(), "one dead letter per bad record");
    for (reason, bytes) in &poison {
        let original = input
            .iter()
            .find(|r| r.payload.as_deref().unwrap_or_default() == bytes.as_slice())
            .unwrap_or_else(|| panic!("input record {:?} read back", text(bytes)));
        let letters: Vec<&tools::ReadRecord> = dead
            .iter()
            .filter(|r| r.payload.as_deref().unwrap_or_default() == bytes.as_slice())
            .collect();
        assert_eq!(
            letters.len(),
            1,
            "exactly one dead letter with the original bytes of {:?}",
            text(bytes)
        );
        let letter = letters[0];
        let header = |name: &str| {
            letter
                .headers
                .get(name)
                .map(|v| text(v))
                .unwrap_or_else(|| panic!("dead letter of {:?} lacks {name}", text(bytes)))
        };
        assert_eq!(
            header("promo.dlq.reason"),
            *reason,
            "reason of {:?}",
            text(bytes)
        );
        assert_eq!(header("__connect.errors.topic"), names.input);
        assert_eq!(
            header("__connect.errors.partition"),
            original.partition.to_string(),
            "partition of {:?}",
            text(bytes)
        );
        assert_eq!(
            header("__connect.errors.offset"),
            original.offset.to_string(),
            "offset of {:?}",
            text(bytes)
        );
        assert_eq!(
            header("__connect.errors.exception.class.name"),
            format!("promo_attribution.{reason}")
        );
        let message = header("__connect.errors.exception.message");
        assert!(!message.is_empty());
        // Messages name the field and the rule, never the value (issue 13, item 4).
        assert!(
            !message.contains("KKKK") && !message.contains("`17`"),
            "{message}"
        );
        assert_eq!(header("__connect.errors.connector.name"), connector);
        assert_eq!(header("__connect.errors.task.id"), task);
        assert_eq!(header("__connect.errors.stage"), "VALUE_CONVERTER");
        assert_eq!(letter.key, original.key, "key of {:?} kept", text(bytes));
    }
    let expected_reasons = multiset(&poison.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    for (reason, count) in expected_reasons {
        assert_eq!(
            metric(
                &render,
                &format!(r#"promo_dlq_records_total{{reason="{reason}"}}"#)
            ),
            Some(count as f64),
            "DLQ metric for {reason}"
        );
    }
    assert_same_records(
        &payloads(&conversions),
        &expected.conversions,
        "good orders' conversions",
    );
}

#[test]
fn sigterm_drains() {
    let t0 = Instant::now();
    let names = Names::new("sigterm");
    names.create_topics(3);
    let records = orders("T", 3000, 5);
    let sentinels = orders("T-sentinel", 30, 6);
    let all_records: Vec<Vec<u8>> = records.iter().chain(&sentinels).cloned().collect();
    let expected = offline_reference(&all_records, &Settings::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    produce(&names.input, &records);

    let mut first = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &["kafka.batch_max_records=50"],
        &log,
    );
    let early = read(&names.conversions, 1, PROCESS_DEADLINE);
    assert!(
        !early.is_empty(),
        "first conversions within {PROCESS_DEADLINE:?}; log:\n{}",
        first.log_tail()
    );
    let signalled = Instant::now();
    let status = first.terminate(Duration::from_secs(20));
    let drain_time = signalled.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status 0 within 20 s of SIGTERM; log:\n{}",
        first.log_tail()
    );
    // What the drained worker wrote: each order at most once, each the offline bytes.
    let by_first = read(&names.conversions, records.len(), support::SETTLE);
    let converted_first = by_first.len();
    let (distinct, repeats) = dedup_identical(&by_first, "order_id", "conversion of order");
    assert_eq!(repeats, 0, "a drained worker leaves no repeats");
    let offline: BTreeSet<Vec<u8>> = expected.conversions.iter().cloned().collect();
    for conversion in &distinct {
        assert!(
            offline.contains(conversion),
            "conversion not in the offline output: {}",
            text(conversion)
        );
    }

    // A fresh member of the group starts from the committed offsets. The sentinels, produced
    // once it holds every partition, land behind anything it might wrongly re-read.
    let fresh =
        InProcessWorker::start(names.settings(&format!("{}-fresh", names.transactional_id), &[]));
    assert!(
        wait_until(Duration::from_secs(30), || fresh
            .metric("promo_assigned_partitions")
            == 3.0),
        "fresh worker holds the 3 partitions"
    );
    produce(&names.input, &sentinels);
    let input = read(&names.input, all_records.len(), Duration::from_secs(10));
    let sentinel_partitions: BTreeSet<i32> = input
        .iter()
        .filter(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(b"T-sentinel-"))
        })
        .map(|r| r.partition)
        .collect();
    assert_eq!(sentinel_partitions.len(), 3, "sentinels on every partition");
    let all = wait_for_orders(
        &names.conversions,
        &order_ids(&all_records),
        PROCESS_DEADLINE,
    );
    let fresh_metrics = fresh.metrics.clone();
    assert_eq!(fresh.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));
    let fresh_consumed = metric(
        &fresh_metrics.render().expect("metrics render"),
        "promo_orders_consumed_total",
    )
    .unwrap_or(0.0);
    let all = read_settled(&names.conversions, all.len());

    assert_eq!(
        fresh_consumed as usize,
        records.len() - converted_first + sentinels.len(),
        "the fresh worker read exactly what the drained one had not converted, plus the sentinels"
    );
    assert_same_records(
        &payloads(&all),
        &expected.conversions,
        "all conversions vs offline",
    );
    eprintln!(
        "sigterm_drains: {} orders; the first worker converted {converted_first} and exited in \
         {drain_time:?} after SIGTERM; the fresh one consumed {fresh_consumed}; in {:?}",
        records.len(),
        t0.elapsed()
    );
}

/// Outputs the producer would refuse (above `message.max.bytes`) must neither stall the worker
/// in endless retries nor vanish: the decision is dead-lettered as `output_too_large`, and a
/// dead letter whose own value is too large goes out without it, with its size in a header.
#[test]
fn oversized_outputs_are_dead_lettered_not_retried() {
    let names = Names::new("oversized");
    names.create_topics(3);
    // 20,000 bytes less the worker's 16 KiB headroom leaves 3,616 bytes per record.
    let settings = names.settings(
        &names.transactional_id,
        &[
            "kafka.producer.message.max.bytes=20000",
            "limits.max_code_bytes=400",
            "limits.max_message_bytes=4000",
        ],
    );
    let order = |id: &str, extra: &str| {
        format!(
            r#"{{"order_id":"{id}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z"{extra}}}"#
        )
        .into_bytes()
    };
    // Twenty unknown 165-byte codes: the input fits in 3,616 bytes, its conversion (which lists
    // them as unknown codes) does not.
    let codes: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{}", "U".repeat(163)))
        .collect();
    let wide = order(
        "O-wide",
        &format!(r#","promo_codes":{}"#, serde_json::json!(codes)),
    );
    assert!(
        wide.len() < 3616,
        "the wide order itself fits: {} bytes",
        wide.len()
    );
    // Over the 4,000-byte input limit and over the producer limit for its dead letter.
    let huge = order("O-huge", &format!(r#","note":"{}""#, "x".repeat(5000)));
    let good = orders("O", 20, 9);
    let records = interleave(good.clone(), &[wide.clone(), huge.clone()]);
    produce(&names.input, &records);

    let worker = InProcessWorker::start(settings);
    let dead = read(&names.dlq, 2, PROCESS_DEADLINE);
    let converted = read(&names.conversions, good.len(), PROCESS_DEADLINE);
    let render = worker.render();
    assert_eq!(worker.stop(STOP_DEADLINE), Ok(WorkerExit::Drained));
    assert_eq!(
        converted.len(),
        good.len(),
        "the other orders converted; metrics:\n{render}"
    );
    assert_eq!(dead.len(), 2, "two dead letters; metrics:\n{render}");
    let reason = |r: &tools::ReadRecord| {
        r.headers
            .get("promo.dlq.reason")
            .map(|v| text(v))
            .unwrap_or_default()
    };
    let wide_letter = dead
        .iter()
        .find(|r| reason(r) == "output_too_large")
        .expect("the wide order is dead-lettered as output_too_large");
    assert_eq!(
        wide_letter.payload.as_deref(),
        Some(wide.as_slice()),
        "with its original bytes"
    );
    assert_eq!(
        wide_letter
            .headers
            .get("__connect.errors.stage")
            .map(|v| text(v)),
        Some("KAFKA_PRODUCE".to_owned()),
        "an output too large failed where it is produced"
    );
    let huge_letter = dead
        .iter()
        .find(|r| reason(r) == "oversize")
        .expect("the huge order is dead-lettered as oversize");
    assert_eq!(
        huge_letter.payload, None,
        "a value too large to resend is left out"
    );
    assert_eq!(
        huge_letter
            .headers
            .get("promo.dlq.payload.omitted.bytes")
            .map(|v| text(v)),
        Some(huge.len().to_string()),
        "and its size is recorded"
    );
    assert_eq!(
        metric(&render, r#"promo_transactions_total{outcome="aborted"}"#),
        Some(0.0),
        "no retries"
    );
}
