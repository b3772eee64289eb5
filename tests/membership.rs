//! How fast partitions move when a worker joins, leaves (SIGTERM) or dies (SIGKILL), with the
//! worker's own group settings (session timeout 10 s, heartbeat 1 s, cooperative-sticky, static
//! membership on or off), on the local broker. The bounds are loose — the times are what the
//! run prints and the README records. A measurement of about a minute each, so not in the
//! suite: `cargo test --test membership -- --ignored --nocapture` (the defaults themselves are
//! checked by the unit tests of `kafka::consumer_config`).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::Utc;
use support::crash::{PARTITIONS, owned_all_after, owned_partitions};
use support::{ChildWorker, Names, wait_until};

#[derive(Debug)]
struct Times {
    joined: Duration,
    left: Duration,
    killed: Duration,
}

fn measure(test: &str, static_membership: bool) -> Times {
    let names = Names::new(test);
    names.create_topics(PARTITIONS);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let membership = format!("kafka.static_membership={static_membership}");
    // The worker's defaults, not the 3 s session the other tests use.
    let sets = [
        "kafka.consumer.session.timeout.ms=10000",
        "kafka.consumer.heartbeat.interval.ms=1000",
        membership.as_str(),
    ];
    let (tx_a, tx_b) = (
        format!("{}-a", names.transactional_id),
        format!("{}-b", names.transactional_id),
    );
    let all = PARTITIONS as usize;
    let limit = Duration::from_secs(120);
    let mut a = ChildWorker::spawn(&names, &tx_a, &sets, &log_a);
    assert!(
        wait_until(limit, || owned_partitions(&log_a).len() == all),
        "a alone owns every partition; log:\n{}",
        a.log_tail()
    );

    let owns_some = |log: &std::path::Path| !owned_partitions(log).is_empty();
    let started = Utc::now();
    let mut b = ChildWorker::spawn(&names, &tx_b, &sets, &log_b);
    assert!(
        wait_until(limit, || owns_some(&log_b)),
        "b gets partitions; a:\n{}\nb:\n{}",
        a.log_tail(),
        b.log_tail()
    );
    let joined = support::crash::ownership(&log_b)
        .into_iter()
        .find_map(|(at, owned)| at.filter(|_| !owned.is_empty()))
        .and_then(|at| (at - started).to_std().ok())
        .expect("b's assignment has a timestamp");

    let stopping = Utc::now();
    let status = b.terminate(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "b drains on SIGTERM"
    );
    assert!(
        wait_until(limit, || owned_all_after(&log_a, stopping, all).is_some()),
        "a takes every partition after b's SIGTERM; log:\n{}",
        a.log_tail()
    );
    let left = owned_all_after(&log_a, stopping, all).expect("measured");

    // b again, then SIGKILL.
    let log_b2 = dir.path().join("b2.log");
    let mut b = ChildWorker::spawn(&names, &tx_b, &sets, &log_b2);
    assert!(
        wait_until(limit, || owns_some(&log_b2)),
        "b gets partitions again; log:\n{}",
        b.log_tail()
    );
    let killing = Utc::now();
    b.kill();
    assert!(
        wait_until(limit, || owned_all_after(&log_a, killing, all).is_some()),
        "a takes every partition after b's SIGKILL; log:\n{}",
        a.log_tail()
    );
    let killed = owned_all_after(&log_a, killing, all).expect("measured");
    let _ = a.terminate(Duration::from_secs(30));
    Times {
        joined,
        left,
        killed,
    }
}

fn check(times: &Times) {
    // Loose: a loaded machine is slow; the point is seconds, not librdkafka's 45 s session
    // (with which a join took ~80 s on this broker).
    let bound = Duration::from_secs(45);
    assert!(
        times.joined < bound && times.left < bound && times.killed < bound,
        "{times:?}"
    );
}

#[test]
#[ignore = "measurement of about a minute; run with --ignored"]
fn membership_changes_take_seconds() {
    let times = measure("members-dynamic", false);
    eprintln!("dynamic membership: {times:?}");
    check(&times);
}

/// Static membership is for real Kafka (the StatefulSet turns it on). On tansu 0.6.0 the member
/// that joins second is never handed the partitions the first one revoked, so this fails there.
#[test]
#[ignore = "evidence about the broker: tansu mishandles static members; run with --ignored"]
fn membership_changes_take_seconds_with_static_membership() {
    let times = measure("members-static", true);
    eprintln!("static membership: {times:?}");
    check(&times);
}
