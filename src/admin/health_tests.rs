//! The rules at chosen instants, on a manual clock: independent of scheduling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;

/// A health past start-up: table loaded, two partitions, the poll loop beating at `at`, a
/// stall threshold of 1 s.
fn running(at: u64) -> (Health, Arc<AtomicU64>, Heartbeat) {
    let (health, clock) = Health::with_manual_clock();
    health.set_stall_after(Duration::from_millis(1000));
    health.set_startup_grace(Duration::from_millis(3000));
    health.set_table_loaded(true);
    health.set_assigned_partitions(2);
    clock.store(at, Ordering::Relaxed);
    let poll_loop = health.register(POLL_LOOP);
    poll_loop.beat();
    (health, clock, poll_loop)
}

fn at(clock: &AtomicU64, ms: u64) {
    clock.store(ms, Ordering::Relaxed);
}

#[test]
fn a_new_worker_is_starting_alive_and_not_ready() {
    let (health, _clock) = Health::with_manual_clock();
    let verdict = health.verdict();
    assert_eq!(verdict.state, WorkerState::Starting);
    assert!(verdict.not_alive.is_empty(), "{:?}", verdict.not_alive);
    let why = verdict.not_ready.join("; ");
    for reason in [
        "code table not loaded",
        "poll loop not started",
        "no partitions assigned",
    ] {
        assert!(why.contains(reason), "{why}");
    }
}

#[test]
fn readiness_follows_the_poll_loop_beat_and_liveness_twice_as_long() {
    let (health, clock, poll_loop) = running(5_000);
    health.pass(true);
    at(&clock, 6_000);
    assert_eq!(health.is_ready(), Ok(()));
    at(&clock, 6_001);
    let err = health.is_ready().expect_err("not turning");
    assert!(err.contains("poll loop not turning"), "{err}");
    assert_eq!(health.state(), WorkerState::Stalled);
    assert_eq!(health.is_alive(), Ok(()));
    at(&clock, 7_001);
    let err = health.is_alive().expect_err("hung");
    assert!(err.contains("poll loop thread not turning"), "{err}");
    poll_loop.beat();
    assert_eq!(health.is_alive(), Ok(()));
    assert_eq!(health.is_ready(), Ok(()));
}

#[test]
fn a_first_heartbeat_may_take_the_startup_grace() {
    let (health, clock) = Health::with_manual_clock();
    health.set_stall_after(Duration::from_millis(1000));
    health.set_startup_grace(Duration::from_millis(3000));
    let _code_sync = health.register("code-sync");
    at(&clock, 3_000);
    assert_eq!(health.is_alive(), Ok(()));
    at(&clock, 3_001);
    let err = health.is_alive().expect_err("never beat");
    assert!(err.contains("code-sync thread not turning"), "{err}");
}

#[test]
fn an_ended_thread_fails_liveness() {
    let (health, _clock, _poll_loop) = running(0);
    let code_sync = health.register("code-sync");
    code_sync.beat();
    assert_eq!(health.is_alive(), Ok(()));
    drop(code_sync);
    let err = health.is_alive().expect_err("ended");
    assert_eq!(err, "code-sync thread has ended");
}

#[test]
fn an_idle_worker_with_nothing_waiting_stays_ready() {
    let (health, clock, poll_loop) = running(0);
    health.batch_committed();
    for ms in (100..=60_000).step_by(100) {
        at(&clock, ms);
        poll_loop.beat();
        health.pass(true);
    }
    assert_eq!(health.is_ready(), Ok(()));
    assert_eq!(health.state(), WorkerState::Idle);
}

#[test]
fn records_waiting_without_a_commit_stall_readiness_until_a_commit() {
    let (health, clock, poll_loop) = running(0);
    health.batch_committed();
    health.set_backlog(Backlog {
        records: 40,
        unpositioned: 0,
    });
    // Idle passes while records wait are not progress: nothing reads them.
    for ms in (100..=1_000).step_by(100) {
        at(&clock, ms);
        poll_loop.beat();
        health.pass(true);
    }
    assert_eq!(health.is_ready(), Ok(()));
    assert_eq!(health.state(), WorkerState::Processing);
    at(&clock, 1_001);
    poll_loop.beat();
    health.pass(true);
    let err = health.is_ready().expect_err("stalled");
    assert!(err.contains("stalled: no progress for 1.001s"), "{err}");
    assert!(err.contains("40 records wait"), "{err}");
    assert_eq!(health.state(), WorkerState::Stalled);
    // Liveness is about threads turning, and this one turns.
    assert_eq!(health.is_alive(), Ok(()));

    health.batch_committed();
    assert_eq!(health.is_ready(), Ok(()));
}

#[test]
fn partitions_without_a_position_count_as_waiting() {
    let (health, clock, poll_loop) = running(0);
    health.set_backlog(Backlog {
        records: 0,
        unpositioned: 3,
    });
    at(&clock, 1_001);
    poll_loop.beat();
    health.pass(true);
    let err = health.is_ready().expect_err("stalled");
    assert!(
        err.contains("3 assigned partitions have no position"),
        "{err}"
    );
    // Never committed: the baseline is the poll loop's start.
    assert!(err.contains("last commit never"), "{err}");
}

#[test]
fn a_failing_batch_is_retrying_at_once_until_a_commit() {
    let (health, clock, poll_loop) = running(0);
    health.batch_committed();
    at(&clock, 10);
    health.batch_failed("detector state: redis down");
    at(&clock, 500);
    poll_loop.beat();
    health.pass(false);
    let err = health.is_ready().expect_err("retrying");
    assert!(
        err.contains("batches failing and retried for 0.490s: detector state: redis down"),
        "{err}"
    );
    assert_eq!(health.state(), WorkerState::Retrying);
    // A second failure keeps the time of the first.
    health.batch_failed("again");
    at(&clock, 900);
    assert!(
        health
            .is_ready()
            .expect_err("retrying")
            .contains("0.890s: again")
    );
    health.batch_committed();
    assert_eq!(health.is_ready(), Ok(()));
    assert_eq!(health.state(), WorkerState::Processing);
}

#[test]
fn a_failure_with_nothing_left_to_redo_clears_after_a_stall_threshold_idle() {
    let (health, clock, poll_loop) = running(0);
    health.batch_failed("revoked mid-batch");
    for ms in (100..=1_000).step_by(100) {
        at(&clock, ms);
        poll_loop.beat();
        health.pass(true);
    }
    // Idle since 100: 900 ms of the 1 s threshold.
    assert_eq!(health.state(), WorkerState::Retrying);
    at(&clock, 1_100);
    poll_loop.beat();
    health.pass(true);
    assert_eq!(health.is_ready(), Ok(()));
    assert_eq!(health.state(), WorkerState::Idle);
}

#[test]
fn a_stale_table_pauses_and_every_reason_is_listed() {
    let (health, clock, poll_loop) = running(0);
    let stale = Arc::new(AtomicBool::new(false));
    let probe = stale.clone();
    health.watch_table(move || {
        probe
            .load(Ordering::Relaxed)
            .then(|| "code table 7 is stale".to_owned())
    });
    health.pass(true);
    assert_eq!(health.is_ready(), Ok(()));
    stale.store(true, Ordering::Relaxed);
    health.batch_failed("code table 7 is stale");
    health.set_backlog(Backlog {
        records: 5,
        unpositioned: 0,
    });
    at(&clock, 1_500);
    poll_loop.beat();
    let verdict = health.verdict();
    assert_eq!(verdict.state, WorkerState::PausedStaleTable);
    let why = verdict.not_ready.join("; ");
    assert!(
        why.contains("crediting paused: code table 7 is stale"),
        "{why}"
    );
    assert!(why.contains("batches failing"), "{why}");
    assert!(why.contains("stalled: no progress"), "{why}");
    assert!(verdict.not_alive.is_empty());
}

#[test]
fn no_partitions_is_unassigned_not_stalled() {
    let (health, clock, poll_loop) = running(0);
    health.set_assigned_partitions(0);
    health.set_backlog(Backlog {
        records: 9,
        unpositioned: 0,
    });
    at(&clock, 5_000);
    poll_loop.beat();
    let verdict = health.verdict();
    assert_eq!(verdict.state, WorkerState::Unassigned);
    assert_eq!(verdict.not_ready, vec!["no partitions assigned".to_owned()]);
}

#[test]
fn a_thread_registered_again_replaces_its_ended_predecessor() {
    let (health, _clock, poll_loop) = running(0);
    drop(poll_loop);
    assert!(health.is_alive().is_err());
    let again = health.register(POLL_LOOP);
    again.beat();
    assert_eq!(health.is_alive(), Ok(()));
}

#[test]
fn an_unreachable_broker_is_named_until_a_broker_answers_or_a_batch_commits() {
    let (health, clock, poll_loop) = running(5_000);
    let names_the_broker = |health: &Health| {
        health
            .is_ready()
            .err()
            .is_some_and(|why| why.contains("broker"))
    };
    health.broker_unreachable("0/1 brokers are down (127.0.0.1:1)");
    at(&clock, 14_999);
    // A moment's report (an idle connection closed by the broker) is not believed yet.
    assert!(!names_the_broker(&health));
    at(&clock, 15_600);
    poll_loop.beat();
    health.broker_unreachable("1/1 brokers are down (127.0.0.1:1)");
    assert!(names_the_broker(&health));
    let verdict = health.verdict();
    assert_eq!(verdict.state, WorkerState::BrokerUnreachable);
    let why = verdict.not_ready.join("; ");
    assert!(
        why.contains("broker unreachable for 10.600s: 1/1 brokers are down (127.0.0.1:1)"),
        "{why}"
    );
    assert_eq!(health.is_alive(), Ok(()));
    health.broker_reachable();
    assert_ne!(health.state(), WorkerState::BrokerUnreachable);
    health.broker_unreachable("down again");
    health.batch_committed();
    assert!(!names_the_broker(&health));
}
