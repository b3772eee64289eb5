//! The chaos suite's scenario on the durable local broker (tansu on S3 storage, started through
//! `scripts/services up --durable` when it is not up): the broker is killed -9 and restarted
//! several times while orders stream, and the workers ride it out. A binary of its own, because
//! pointing the shared helpers at the durable broker is a per-process choice.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::chaos::{
    ProgressTrace, Stream, chaos_orders, drained, report, scenario_stream, settle_deadline, spawn,
    verify, when_converted,
};
use support::{Names, restart_durable_broker, use_durable_broker};

#[test]
#[ignore = "minutes; run by scripts/chaos"]
fn broker_killed_three_times_durable() {
    use_durable_broker();
    let started = Instant::now();
    let names = Names::new("chaos-broker-restart");
    names.create_topics(6);
    let settings = names.settings(&names.transactional_id, &[]);
    // The durable broker is far slower for a paced stream (each produce and fetch goes through
    // the local S3 server, and each fetch lists the partition's stored batches): a tenth of the
    // memory scenarios' orders keeps the run to minutes.
    let count = chaos_orders() / 10;
    let (records, expected) = scenario_stream("broker", count, 53, &settings);
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = vec!["kafka.batch_max_records=500".to_string()];
    let mut worker = spawn(
        &names,
        &names.transactional_id,
        &sets,
        &dir.path().join("w.log"),
    );
    let stream = Stream::paced(&names.input, records);
    let _trace = ProgressTrace::start(&names, &stream, Duration::from_secs(5));
    let mut downtime = Vec::new();
    for step in 1..=3 {
        when_converted(&names, expected.conversions.len(), step as f64 / 4.0);
        downtime.push(restart_durable_broker());
    }
    stream.join();
    let verdict = verify(&names, &expected, settle_deadline());
    if !verdict.clean() {
        eprintln!("worker log (tail):\n{}", worker.log_tail());
    }
    drained(&mut worker);
    report(
        "broker-killed-x3-durable",
        &verdict,
        started,
        &format!("durable broker kill -9 and restart at 25/50/75 %, down {downtime:?}"),
    );
}
