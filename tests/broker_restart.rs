//! The worker against the durable local broker (`scripts/services up --durable`: tansu with its
//! `s3://` storage on a local moto S3 server; started here when it is not up): the broker is
//! killed with SIGKILL mid-stream and restarted on the same storage, and the worker resumes by
//! itself with every order converted once; and the post-crash case of `tests/group_crash.rs` on
//! this broker.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use promo_attribution::settings::Settings;
use support::admin::{admin_address, diagnostics};
use support::crash::{self, PARTITIONS};
use support::{
    ChildWorker, Names, assert_same_records, diagnose, group_by, offline_reference, order_ids,
    orders, produce, read, read_outputs, restart_durable_broker_after, text, use_durable_broker,
};

const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn worker_resumes_after_the_broker_is_killed() {
    resumes_after_restart("worker_resumes_after_the_broker_is_killed", 0);
}

/// A broker down for longer than the worker's transaction timeout (15 s): the outputs in flight
/// time out in the producer. The first run of a 30-run loop of the test above saw the broker
/// down ~16 s (its restart waited for the services lock) and the worker never wrote again.
#[test]
#[ignore = "a minute; run with --ignored"]
fn worker_resumes_after_the_broker_is_down_longer_than_the_transaction_timeout() {
    resumes_after_restart(
        "worker_resumes_after_the_broker_is_down_longer_than_the_transaction_timeout",
        20,
    );
}

/// 3,000 orders, 2,000 of them produced before the worker starts: the broker is killed once the
/// first conversions show, stays down `down_secs`, and comes back on the same storage; the
/// worker writes every order's conversion, equal to offline mode, once (repeats byte-identical).
/// It rides the restart out, unless librdkafka declares its producer unusable: it then exits 1,
/// and the test restarts it as its supervisor would (see [`supervise`]).
fn resumes_after_restart(test: &str, down_secs: u64) {
    use_durable_broker();
    let t0 = Instant::now();
    let names = Names::new("broker-restart");
    names.create_topics(PARTITIONS);
    let records = orders("R", 3000, 29);
    let ids = order_ids(&records);
    let expected = offline_reference(&records, &Settings::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    let (before, after) = records.split_at(records.len() * 2 / 3);
    produce(&names.input, before);
    let mut worker = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &["kafka.batch_max_records=50"],
        &log,
    );
    assert!(
        !read(&names.conversions, 1, DEADLINE).is_empty(),
        "first conversions; log:\n{}",
        worker.log_tail()
    );
    // Mid-stream: the worker is still deciding the first part when the broker dies.
    let at_kill = read(&names.conversions, before.len(), Duration::from_millis(200)).len();
    let down_for = restart_durable_broker_after(down_secs);
    produce(&names.input, after);

    let stop = AtomicBool::new(false);
    let (outputs, restarts) = std::thread::scope(|scope| {
        let supervisor = scope.spawn(|| supervise(&mut worker, &names, dir.path(), &stop));
        let outputs = read_outputs(&names.conversions, "order_id", &ids, DEADLINE);
        stop.store(true, Ordering::SeqCst);
        (outputs, supervisor.join().expect("supervisor thread"))
    });
    assert_eq!(
        worker.exited(),
        None,
        "the worker rode out the broker restart; log:\n{}",
        worker.log_tail()
    );
    let address = admin_address(&worker);
    let by_order = group_by(outputs.records(), "order_id");
    let seen: BTreeSet<&String> = by_order.keys().collect();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !seen.contains(id))
        .take(10)
        .collect();
    if !missing.is_empty() {
        let tail = worker.log_tail();
        panic!(
            "orders without a conversion (first 10): {missing:?}\nworker: {}\n{}worker logs kept in {}; the last one's tail:\n{tail}",
            diagnostics(&address),
            diagnose(&names, PARTITIONS, &ids),
            dir.keep().display(),
        );
    }
    let mut firsts = Vec::new();
    let mut repeats = 0;
    for (id, copies) in &by_order {
        for copy in &copies[1..] {
            assert_eq!(
                text(copy),
                text(&copies[0]),
                "conversion of {id} written twice with different bytes"
            );
        }
        repeats += copies.len() - 1;
        firsts.push(copies[0].clone());
    }
    assert_same_records(
        &firsts,
        &expected.conversions,
        "distinct conversions vs offline",
    );
    let aborted =
        support::admin::metric_value(&address, r#"promo_transactions_total{outcome="aborted"}"#);
    let status = worker.terminate(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the worker drains on SIGTERM after the restart; log:\n{}",
        worker.log_tail()
    );
    // Batches redone because the broker answered a retried send with "duplicate" (tansu may say
    // so of a batch it never stored; docs/dev-notes/2026-12-06-broker-restart-lost-outputs.md).
    let unconfirmed: usize = std::fs::read_dir(dir.path())
        .expect("the logs' dir")
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .map(|log| log.matches("reported delivered without an offset").count())
        .sum();
    eprintln!(
        "{test}: {} orders, {at_kill} conversions before the kill, \
         broker back in {down_for:?}, {} conversion records ({repeats} byte-identical repeats, read {:?}), \
         {aborted} transactions aborted (last instance), {unconfirmed} batches redone for a delivery without an offset, \
         {} supervisor restarts {restarts:?}, in {:?}",
        records.len(),
        outputs.records().len(),
        outputs.isolation,
        restarts.len(),
        t0.elapsed()
    );
}

/// The supervisor's part, until `stop`: a worker that exits 1 because librdkafka declared its
/// producer unusable (after a broker kill tansu has answered a send with
/// OUT_OF_ORDER_SEQUENCE_NUMBER, which is fatal to an idempotent producer) is started again
/// under the same transactional id, which fences the old instance. Any other exit fails the
/// test. Returns librdkafka's reason for each restart.
fn supervise(
    worker: &mut ChildWorker,
    names: &Names,
    dir: &Path,
    stop: &AtomicBool,
) -> Vec<String> {
    let mut restarts = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Some(status) = worker.exited() {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            let fatal = log
                .lines()
                .find(|line| line.contains("facility=\"FATAL\""))
                .map(|line| line.chars().take(200).collect::<String>());
            let Some(fatal) = fatal.filter(|_| status.code() == Some(1)) else {
                panic!(
                    "the worker exited ({status}) without a fatal librdkafka error; log:\n{}",
                    worker.log_tail()
                );
            };
            restarts.push(fatal);
            *worker = ChildWorker::spawn(
                names,
                &names.transactional_id,
                &["kafka.batch_max_records=50"],
                &dir.join(format!("worker-{}.log", restarts.len())),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    restarts
}

/// As `tests/group_crash.rs`: once the dead instance is fenced, the survivor should commit
/// everything. On the durable broker it did not within 90 s (1 run of 1): the survivor owned
/// every partition after 5 s and decided every order, but its commits stayed unfinished — the
/// overlapping-transaction defect of tansu (docs/dev-notes/2026-12-06-post-crash-stall.md),
/// which the slower storage makes likelier. Kept as evidence.
#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn survivor_commits_everything_once_the_dead_instance_is_fenced_durable() {
    use_durable_broker();
    crash::kill_one_of_two("durable-crash-fenced", true, Duration::from_secs(90))
        .assert_complete("survivor_commits_everything_once_the_dead_instance_is_fenced_durable");
}

/// Broker evidence, as in `tests/group_crash.rs`: without a fence the dead instance's open
/// transaction holds back every later commit that overlaps it, on durable storage too.
#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn survivor_commits_everything_when_a_member_dies_for_good_durable() {
    use_durable_broker();
    crash::kill_one_of_two("durable-crash-unfenced", false, Duration::from_secs(90))
        .assert_complete("survivor_commits_everything_when_a_member_dies_for_good_durable");
}
