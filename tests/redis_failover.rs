//! Redis Cluster failover under a running worker: the primary that holds program 1001's detector
//! state is killed (SIGKILL) mid-stream and its replica is promoted. The worker's detector step
//! fails while the slot has no primary, the batch is aborted and redone, the worker resumes by
//! itself on the new primary, and its outputs are the offline run's: nothing lost, nothing
//! counted twice. `store.wait_replicas = 1` makes every committed batch's state reach the
//! replica first, so the promotion cannot take counts back; the killed node is started again
//! (as an orchestrator would), rejoins as a replica, and only then can batches commit again.
//!
//! Holds the cluster lock exclusively: no other test runs on the cluster meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use promo_attribution::redis::connect::{Endpoint, Node, slot};
use support::redis::{
    assert_offline_and_counted_once, detector_sets, offline_run, outputs_after, produce,
};
use support::store::store_settings;
use support::{
    InProcessWorker, Names, cluster_lock, order_ids, orders, read, redis_cluster,
    redis_cluster_url, unique_prefix, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(30);

#[test]
fn a_primary_killed_mid_stream_loses_and_repeats_nothing() {
    let _cluster = cluster_lock(true);
    let url = redis_cluster_url();
    // The node a previous run killed is back (as a replica) before this run kills another.
    redis_cluster(&["up"]);
    let names = Names::new("failover");
    names.create_topics(1);
    let records = orders("FO", 3000, 31);
    let ids = order_ids(&records);
    let prefix = unique_prefix("failover");
    let mut sets = detector_sets(url, &prefix);
    sets.extend([
        "kafka.batch_max_records=50".to_string(),
        "store.wait_replicas=1".to_string(),
        "worker.max_backoff_ms=500".to_string(),
    ]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let settings = names.settings(&names.transactional_id, &sets);
    let (expected_conversions, expected_alerts) = offline_run(&records, &settings);

    let endpoint = Endpoint::new(&store_settings(url, &prefix)).expect("cluster settings");
    let program_slot = slot(b"1001");
    let primary = || -> Option<Node> {
        let map = endpoint.slot_map().ok()?;
        map.primary(program_slot).cloned()
    };
    let victim = primary().expect("a primary serves program 1001's slot");

    let (first, rest) = records.split_at(records.len() / 3);
    produce(&names.input, first);
    let worker = InProcessWorker::start(settings);
    assert!(
        !read(&names.conversions, 1, DEADLINE).is_empty(),
        "first conversions before the kill"
    );
    redis_cluster(&["stop-node", &victim.port.to_string()]);
    produce(&names.input, rest);
    let promoted = wait_until(Duration::from_secs(30), || {
        primary().is_some_and(|node| node != victim)
    });
    assert!(promoted, "no replica took over from {victim}");
    // The orchestrator starts the lost node again; it rejoins as the new primary's replica.
    // Until then that primary has no replica and `WAIT 1` holds the worker back: with
    // `wait_replicas`, a shard without a replica pauses the worker rather than risk counts.
    redis_cluster(&["up"]);

    let mut failures = 0.0;
    let (conversions, alerts) = outputs_after(&names, &ids, &expected_alerts, DEADLINE, || {
        failures = worker.metric("promo_detector_step_failures_total");
        assert!(worker.stop(STOP).is_ok(), "worker drains");
    });
    assert_offline_and_counted_once(
        url,
        &prefix,
        &records,
        (&conversions, &alerts),
        (&expected_conversions, &expected_alerts),
    );
    assert!(
        failures >= 1.0,
        "the worker paused on the lost primary (step failures {failures})"
    );
    eprintln!(
        "failover: killed {victim}, now {:?}; {} conversions, {} alerts, {failures} failed steps",
        primary(),
        conversions.len(),
        alerts.len()
    );
}
