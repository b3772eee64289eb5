//! The probes tell the truth against the real broker and Redis (issue 12, items 1 and 3):
//! `/readyz` fails, saying why, while the worker cannot make progress — batches failing with
//! Redis down, crediting paused on a stale table, records waiting behind a dead instance's open
//! transaction — and `/healthz` stays 200 throughout, because every thread still turns. Each
//! scenario also comes back: ready again once the cause is gone, with every order decided.
//!
//! And liveness when a thread the worker needs does not turn (item 1: "a thread that dies is
//! fatal or restarted — never silently gone"): the real code-sync thread panics, or hangs, through
//! the debug-build test fault of `promo_attribution::faults`.
//!
//! Workers run as subprocesses (the `run` command with its admin port), so the answers are the
//! ones a kubelet would get.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use promo_attribution::faults;
use support::admin::{admin_address, get, metric_value, scrape, strip_ansi, try_get, wait_for};
use support::redis::{PrivateRedis, detector_sets, produce};
use support::{
    ChildWorker, Names, brokers, field, follow, multiset, order_ids, orders, read, read_settled,
    store, unique_prefix, wait_for_orders, wait_until,
};

/// Long enough for a group join on the local broker and a few backoffs; only bounds a failure.
const DEADLINE: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(30);
/// Readiness thresholds of these workers: short, so a stall shows within seconds.
const STALL_AFTER: &str = "admin.stall_after_secs=2";

fn state(address: &str, name: &str) -> f64 {
    metric_value(address, &format!("promo_worker_state{{state=\"{name}\"}}"))
}

fn ready(address: &str, worker: &ChildWorker) {
    let (held, status, body) = wait_for(address, "/readyz", DEADLINE, |s, _| s == 200);
    assert!(
        held,
        "not ready: {status} {body}\nlog:\n{}",
        worker.log_tail()
    );
}

fn alive(address: &str) {
    let (status, body) = get(address, "/healthz");
    assert_eq!(status, 200, "liveness must hold while threads turn: {body}");
}

fn drains(mut worker: ChildWorker) {
    let status = worker.terminate(STOP);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "drains; log:\n{}",
        worker.log_tail()
    );
}

/// One worker on a fresh 1-partition input, with `sets`, that has decided a first few orders
/// and is ready: its admin address, and the temp dir holding its log.
fn started(names: &Names, sets: &[String], seed: u64) -> (ChildWorker, String, tempfile::TempDir) {
    names.create_topics(1);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = ChildWorker::spawn(
        names,
        &names.transactional_id,
        &sets,
        &dir.path().join("w.log"),
    );
    let address = admin_address(&worker);
    let first = orders(&format!("F{seed}"), 10, seed);
    produce(&names.input, &first);
    wait_for_orders(&names.conversions, &order_ids(&first), DEADLINE);
    ready(&address, &worker);
    (worker, address, dir)
}

#[test]
fn redis_down_with_the_detectors_fails_readiness_not_liveness_until_it_returns() {
    let names = Names::new("health-redis-down");
    let mut redis = PrivateRedis::reserve();
    redis.start();
    let mut sets = detector_sets(&redis.url(), &unique_prefix("health"));
    sets.extend([STALL_AFTER.to_string(), "worker.max_backoff_ms=500".into()]);
    let (worker, address, _dir) = started(&names, &sets, 41);

    redis.stop();
    let second = orders("HS", 20, 42);
    produce(&names.input, &second);
    let (held, status, body) = wait_for(&address, "/readyz", DEADLINE, |s, body| {
        s == 503 && body.contains("batches failing")
    });
    assert!(
        held,
        "readiness while Redis is down: {status} {body}\nlog:\n{}",
        worker.log_tail()
    );
    assert!(
        body.contains("detector"),
        "the reason names the cause: {body}"
    );
    alive(&address);
    assert_eq!(state(&address, "retrying"), 1.0);
    assert_eq!(state(&address, "processing"), 0.0);

    redis.start();
    ready(&address, &worker);
    wait_for_orders(&names.conversions, &order_ids(&second), DEADLINE);
    alive(&address);
    drains(worker);
}

#[test]
fn a_stale_table_pauses_readiness_an_idle_worker_stays_ready() {
    let names = Names::new("health-stale");
    let mut redis = PrivateRedis::reserve();
    redis.start();
    let prefix = unique_prefix("health-stale");
    store::import_samples(&redis.url(), &prefix);
    let sets = [
        "codes.source=redis".to_string(),
        format!("store.redis_url={}", redis.url()),
        format!("store.key_prefix={prefix}"),
        "store.max_staleness_secs=1".into(),
        "store.poll_interval_ms=200".into(),
        "store.connect_timeout_ms=300".into(),
        "store.io_timeout_ms=300".into(),
        STALL_AFTER.into(),
    ];
    let (worker, address, _dir) = started(&names, &sets, 43);

    // Idle with nothing waiting, for three stall thresholds: still ready, and idle.
    let idle_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < idle_until {
        let (status, body) = get(&address, "/readyz");
        assert_eq!(
            status, 200,
            "an idle worker with no lag stays ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state(&address, "idle"), 1.0);

    // Hung Redis: the table can no longer be confirmed, and past max_staleness crediting stops.
    redis.pause(true);
    let (held, status, body) = wait_for(&address, "/readyz", DEADLINE, |s, body| {
        s == 503 && body.contains("crediting paused")
    });
    assert!(held, "readiness on a stale table: {status} {body}");
    assert!(body.contains("stale"), "{body}");
    assert_eq!(state(&address, "paused_stale_table"), 1.0);
    // The code-sync thread keeps turning while it waits on Redis.
    alive(&address);

    redis.pause(false);
    ready(&address, &worker);
    let second = orders("SU", 5, 44);
    produce(&names.input, &second);
    wait_for_orders(&names.conversions, &order_ids(&second), DEADLINE);
    drains(worker);
}

/// The sum of the worker's `promo_consumer_lag_records` and its committed transactions.
fn lag_and_commits(address: &str) -> (f64, f64) {
    let text = scrape(address);
    let lag = text
        .lines()
        .filter(|l| l.starts_with("promo_consumer_lag_records{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let commits = support::metric(&text, r#"promo_transactions_total{outcome="committed"}"#)
        .unwrap_or(f64::NAN);
    (lag, commits)
}

/// Issue 12 item 3: of two exactly-once workers, one is SIGKILLed mid-stream and never
/// restarted. On the local broker the survivor then holds every partition, with records
/// waiting, and commits nothing (the stall itself is investigated elsewhere). Whenever it has
/// lag and has not committed for longer than the stall threshold (plus the 5 s statistics
/// period), `/readyz` must say `stalled` — the old probes said "ready" all along. A survivor
/// that catches up instead passes too: the invariant is only checked while it is stuck.
#[test]
fn a_survivor_with_lag_and_no_commits_is_not_ready() {
    let names = Names::new("health-survivor");
    names.create_topics(6);
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = [STALL_AFTER, "kafka.batch_max_records=50"];
    let spawn = |who: &str| {
        ChildWorker::spawn(
            &names,
            &format!("{}-{who}", names.transactional_id),
            &sets,
            &dir.path().join(format!("{who}.log")),
        )
    };
    let mut victim = spawn("a");
    let survivor = spawn("b");
    let address = admin_address(&survivor);
    let victim_address = admin_address(&victim);
    assert!(
        wait_until(DEADLINE, || {
            metric_value(&address, "promo_assigned_partitions") > 0.0
                && metric_value(&victim_address, "promo_assigned_partitions") > 0.0
        }),
        "both workers hold partitions"
    );
    produce(&names.input, &orders("SV", 3000, 46));
    // Killed once its outputs show, mid-stream: the shape that left the survivor stuck.
    let early = read(&names.conversions, 200, DEADLINE);
    assert!(!early.is_empty(), "the workers are at work");
    victim.kill();
    produce(&names.input, &orders("SW", 3000, 47));

    // Allowed delay between "stuck" and the probe saying so: the statistics period (lag is
    // measured every 5 s) and the sampling step.
    let slack = Duration::from_secs(2 + 5 + 1);
    let started = Instant::now();
    let (mut last_commits, mut since) = (f64::NAN, Instant::now());
    let mut stuck_and_reported = 0;
    while started.elapsed() < Duration::from_secs(60) && stuck_and_reported < 5 {
        let (lag, commits) = lag_and_commits(&address);
        if commits != last_commits {
            (last_commits, since) = (commits, Instant::now());
        }
        let (status, body) = get(&address, "/readyz");
        if lag == 0.0 && since.elapsed() > slack {
            // Caught up: nothing waits, nothing to commit.
            break;
        }
        if lag > 0.0 && since.elapsed() > slack {
            assert!(
                status == 503 && body.contains("stalled"),
                "lag {lag} and no commit for {:?}, yet readiness says {status} {body}",
                since.elapsed()
            );
            assert_eq!(state(&address, "stalled"), 1.0);
            alive(&address);
            stuck_and_reported += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "survivor: stuck and reported not ready in {stuck_and_reported} samples (0 = it caught up)"
    );
}

// ---------------------------------------------------------------------------------------------
// A thread the worker needs dies or hangs: never silently gone (issue 12, item 1)

/// Every `/healthz` answer, sampled every few milliseconds from another thread until the port
/// closes (the worker exited); consecutive equal answers are kept once, with their count. Also
/// how long the last answer held before the port closed.
fn sample_liveness(address: String) -> std::thread::JoinHandle<(Vec<Answers>, Duration)> {
    std::thread::spawn(move || {
        let mut answers: Vec<Answers> = Vec::new();
        let mut since = Instant::now();
        while let Ok((status, body)) = try_get(&address, "/healthz") {
            match answers.last_mut() {
                Some(last) if last.status == status && last.body == body => last.count += 1,
                _ => {
                    since = Instant::now();
                    answers.push(Answers {
                        status,
                        body,
                        count: 1,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (answers, since.elapsed())
    })
}

/// A run of equal `/healthz` answers.
#[derive(Debug)]
struct Answers {
    status: u16,
    body: String,
    count: usize,
}

/// Orders for program 1001 with code `anna10`, which the version published in these tests
/// expires: a conversion's decision shows which table made it. Kept in `sent` by order id.
fn anna10_orders(sent: &mut BTreeMap<String, Vec<u8>>, prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let record = store::order(&id, "anna10");
            sent.insert(id, record.clone());
            record
        })
        .collect()
}

fn keys(records: &[Vec<u8>]) -> BTreeSet<String> {
    records.iter().map(|r| field(r, "order_id")).collect()
}

/// Whether the worker's `promo_code_table_info` names store version `number`.
fn uses_version(address: &str, number: &str) -> bool {
    scrape(address).lines().any(|line| {
        line.strip_prefix("promo_code_table_info{version=\"")
            .is_some_and(|rest| follow::number(rest) == number && line.ends_with(" 1"))
    })
}

/// A worker on a store of its own (the sample table as version 1) with the code-sync fault
/// `fault` armed, that has decided 20 orders (`before-*`, kept in `sent`).
struct Faulted {
    names: Names,
    url: &'static str,
    prefix: String,
    sets: Vec<String>,
    dir: tempfile::TempDir,
    worker: ChildWorker,
    address: String,
    sent: BTreeMap<String, Vec<u8>>,
}

fn faulted(test: &str, partitions: i32, fault: &str) -> Faulted {
    let names = Names::new(test);
    names.create_topics(partitions);
    let url = support::redis_url();
    let prefix = unique_prefix(test);
    store::import_samples(url, &prefix);
    let sets = store::store_sets(url, &prefix, &[STALL_AFTER]);
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = ChildWorker::spawn_with_env(
        brokers(),
        &names,
        &names.transactional_id,
        &sets.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.path().join("w.log"),
        &[(faults::CODE_SYNC, fault)],
    );
    let address = admin_address(&worker);
    let mut sent = BTreeMap::new();
    let before = anna10_orders(&mut sent, "before", 20);
    produce(&names.input, &before);
    wait_for_orders(&names.conversions, &keys(&before), DEADLINE);
    alive(&address);
    Faulted {
        names,
        url,
        prefix,
        sets,
        dir,
        worker,
        address,
        sent,
    }
}

/// The real code-sync thread of a running worker panics (the debug-build test fault of
/// `promo_attribution::faults`) as it applies a version published while orders flow. From the
/// panic until its port closes `/healthz` says the thread has ended; the worker drains and exits
/// 1 naming the thread (fatal, so the supervisor restarts it), and the restarted worker follows
/// the store again. Every order has exactly one conversion, equal to what offline mode decides
/// with the table version the conversion names.
#[test]
fn a_code_sync_thread_that_dies_ends_the_worker_and_its_restart_follows_the_store() {
    let Faulted {
        names,
        url,
        prefix,
        sets,
        dir,
        mut worker,
        address,
        mut sent,
    } = faulted("health-sync-dies", 3, "panic");

    // Version 2 is published while orders stream in; applying it kills the thread.
    let during = anna10_orders(&mut sent, "during", 300);
    let liveness = sample_liveness(address.clone());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in during.chunks(10) {
                produce(&names.input, chunk);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let out = store::ok(&store::codes(url, &prefix, &["expire", "ANNA10"]));
        assert!(out.contains("published version 2"), "{out}");
    });
    let mut status = None;
    assert!(
        wait_until(DEADLINE, || {
            status = worker.exited();
            status.is_some()
        }),
        "the worker carried on without its code-sync thread; log:\n{}",
        worker.log_tail()
    );
    let log = strip_ansi(&std::fs::read_to_string(&worker.log).unwrap_or_default());
    assert_eq!(status.and_then(|s| s.code()), Some(1), "log:\n{log}");
    assert!(
        log.contains("the code-sync thread panicked: test fault")
            && log.contains("draining and exiting"),
        "the log names the thread and why:\n{log}"
    );
    let (answers, last_held) = liveness.join().expect("liveness sampler");
    let died = answers
        .iter()
        .position(|a| a.status != 200)
        .unwrap_or_else(|| panic!("/healthz never failed before the port closed: {answers:?}"));
    assert!(
        answers[died..]
            .iter()
            .all(|a| a.status == 503 && a.body.contains("code-sync thread has ended")),
        "once failed, /healthz names the dead thread until the exit: {answers:?}"
    );
    eprintln!(
        "code-sync panic: /healthz {answers:?}, the last for {last_held:?} before the port closed"
    );

    // Restarted (the supervisor's part): it starts on version 2, then follows version 3.
    let worker = ChildWorker::spawn(
        &names,
        &names.transactional_id,
        &sets.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.path().join("w2.log"),
    );
    let address = admin_address(&worker);
    assert!(
        wait_until(DEADLINE, || uses_version(&address, "2")),
        "the restart loads the current version; log:\n{}",
        worker.log_tail()
    );
    let rolled = store::ok(&store::codes(url, &prefix, &["rollback", "1"]));
    assert!(rolled.contains("published version 3"), "{rolled}");
    assert!(
        wait_until(DEADLINE, || uses_version(&address, "3")),
        "the restarted worker follows the store; log:\n{}",
        worker.log_tail()
    );
    let after = anna10_orders(&mut sent, "after", 50);
    produce(&names.input, &after);

    let records = read_settled(&names.conversions, sent.len());
    let payloads: Vec<Vec<u8>> = records.iter().filter_map(|r| r.payload.clone()).collect();
    let per_order = multiset(
        &payloads
            .iter()
            .map(|p| field(p, "order_id"))
            .collect::<Vec<_>>(),
    );
    let missing: Vec<&String> = sent
        .keys()
        .filter(|id| !per_order.contains_key(*id))
        .collect();
    let repeated: Vec<(&String, &usize)> = per_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && repeated.is_empty() && per_order.len() == sent.len(),
        "each order converted exactly once: missing {missing:?}, repeated {repeated:?}; log:\n{}",
        worker.log_tail()
    );
    follow::assert_each_matches_its_version(url, &prefix, &sent, &payloads);
    for payload in &payloads {
        let id = field(payload, "order_id");
        let version = field(payload, "code_table_version");
        let expected = match id.split('-').next() {
            Some("before") => Some("1"),
            Some("after") => Some("3"),
            // Decided by the first worker (version 1) or the restart (version 2).
            _ => None,
        };
        assert!(
            expected.is_none_or(|n| follow::number(&version) == n),
            "{id} decided with version {version}"
        );
    }
    drains(worker);
}

/// The real code-sync thread stops turning (the `hang` fault) when a version is published:
/// `/healthz` fails within twice the stall threshold, naming it, so the kubelet restarts the
/// worker; the poll loop meanwhile decides orders with the table in force, and SIGTERM drains.
#[test]
fn a_code_sync_thread_that_stops_turning_fails_liveness() {
    let Faulted {
        names,
        url,
        prefix,
        worker,
        address,
        mut sent,
        ..
    } = faulted("health-sync-hangs", 1, "hang");
    let out = store::ok(&store::codes(url, &prefix, &["expire", "ANNA10"]));
    assert!(out.contains("published version 2"), "{out}");
    let (held, status, body) = wait_for(&address, "/healthz", DEADLINE, |s, body| {
        s == 503 && body.contains("code-sync thread not turning")
    });
    assert!(
        held,
        "liveness with a hung code-sync thread: {status} {body}\nlog:\n{}",
        worker.log_tail()
    );
    let after = anna10_orders(&mut sent, "after", 20);
    produce(&names.input, &after);
    let decided = wait_for_orders(&names.conversions, &keys(&after), DEADLINE);
    assert!(
        decided
            .iter()
            .filter_map(|r| r.payload.as_deref())
            .filter(|p| field(p, "order_id").starts_with("after-"))
            .all(|p| follow::number(&field(p, "code_table_version")) == "1"),
        "decided with the table in force"
    );
    drains(worker);
}
