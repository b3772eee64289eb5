//! What the local broker (tansu) does with two transactional producers writing to the same
//! partition and committing at the same moment (the defects described in docs/dev-notes/2026-12-05-commit-path-and-tansu.md), and
//! that our reader is immune to the one it can be. The `#[ignore]`d tests check the broker, not
//! our code: they assert what a correct broker does, so they fail on tansu 0.6.0 and are kept to
//! re-check a newer broker (`cargo test --test broker_txn -- --ignored --nocapture`).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use promo_attribution::kafka::tools::{self, Isolation};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::{Names, brokers, wait_until};

fn transactional(id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", id)
        .set("linger.ms", "0")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    producer
}

fn one_transaction(producer: &BaseProducer, topic: &str, barrier: Option<&Barrier>) {
    producer.begin_transaction().expect("begin");
    producer
        .send(
            BaseRecord::<str, str>::to(topic)
                .partition(0)
                .key("k")
                .payload("v"),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    while producer.in_flight_count() > 0 {
        producer.poll(Duration::from_millis(1));
    }
    if let Some(barrier) = barrier {
        barrier.wait();
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
}

/// A transaction with input offsets and no records, as a worker with nothing to read could
/// commit.
fn offsets_only_transaction(producer: &BaseProducer, group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer for group metadata");
    let metadata = consumer.group_metadata().expect("group metadata");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .expect("offsets");
    producer.begin_transaction().expect("begin");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
        .expect("send offsets");
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
}

/// Records a read_committed and a read_uncommitted reader get from the topic.
fn visible(topic: &str, expected: usize) -> (usize, usize) {
    let read = |isolation| {
        tools::read_topic_as(
            brokers(),
            topic,
            expected,
            Duration::from_secs(2),
            isolation,
        )
        .expect("read")
        .len()
    };
    (
        read(Isolation::ReadCommitted),
        read(Isolation::ReadUncommitted),
    )
}

/// (last stable offset, high watermark) of partition 0.
fn marks(topic: &str) -> (i64, i64) {
    let committed = tools::end_offsets(brokers(), topic, Isolation::ReadCommitted).expect("lso");
    let uncommitted = tools::end_offsets(brokers(), topic, Isolation::ReadUncommitted).expect("hw");
    (committed[0].2, uncommitted[0].2)
}

/// Whether the last stable offset catches up with the high watermark within `timeout`.
fn settles(topic: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let (lso, hw) = marks(topic);
        lso == hw
    })
}

#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn simultaneous_commits_can_leave_the_lso_stuck() {
    let names = Names::new("broker-txn");
    tools::create_topics(brokers(), &[&names.conversions], 1).expect("topic");
    let topic = names.conversions.as_str();
    let a = transactional(&format!("{}-a", names.transactional_id));
    let b = transactional(&format!("{}-b", names.transactional_id));
    let barrier = Arc::new(Barrier::new(2));
    let rounds = 40;
    let mut stuck_rounds = Vec::new();
    for round in 0..rounds {
        // Both commit at the same moment...
        std::thread::scope(|s| {
            s.spawn(|| one_transaction(&a, topic, Some(&barrier)));
            s.spawn(|| one_transaction(&b, topic, Some(&barrier)));
        });
        // ...then only a writes.
        one_transaction(&a, topic, None);
        if !settles(topic, Duration::from_secs(2)) {
            let records = 3 * (round + 1);
            eprintln!(
                "round {round}: stuck after a's lone commit: (lso, hw) {:?}; records visible (read_committed, read_uncommitted) {:?} of {records}",
                marks(topic),
                visible(topic, records)
            );
            // A transaction of b's that carries only offsets releases it.
            offsets_only_transaction(&b, &names.group, &names.input);
            let released = settles(topic, Duration::from_secs(2));
            eprintln!(
                "round {round}: after b commits offsets only: released {released}, (lso, hw) {:?}; visible {:?}",
                marks(topic),
                visible(topic, records)
            );
            if !released {
                one_transaction(&b, topic, None);
                eprintln!(
                    "round {round}: after a record of b's: released {}, (lso, hw) {:?}",
                    settles(topic, Duration::from_secs(2)),
                    marks(topic)
                );
            }
            stuck_rounds.push(round);
        }
    }
    eprintln!(
        "stuck in {} of {rounds} rounds: {stuck_rounds:?}",
        stuck_rounds.len()
    );
    assert!(
        stuck_rounds.is_empty(),
        "the LSO stayed behind the high watermark in rounds {stuck_rounds:?}"
    );
}

/// The same defect through two workers: each round puts one order on each of the two input
/// partitions at once (so both members commit at about the same moment), then one more on
/// partition 0 only, and checks that its conversion becomes visible to a read_committed reader.
#[test]
#[ignore = "evidence about the broker through the worker; run with --ignored"]
fn a_quiet_member_can_leave_the_other_members_commit_invisible() {
    use rdkafka::producer::Producer as _;
    use support::{InProcessWorker, orders};
    let names = Names::new("quiet-member");
    tools::create_topics(brokers(), &[&names.input], 2).expect("input topic");
    tools::create_topics(
        brokers(),
        &[&names.conversions, &names.alerts, &names.dlq],
        1,
    )
    .expect("output topics");
    let extra = ["kafka.batch_min_ms=0"];
    let a =
        InProcessWorker::start(names.settings(&format!("{}-a", names.transactional_id), &extra));
    let b =
        InProcessWorker::start(names.settings(&format!("{}-b", names.transactional_id), &extra));
    let assigned = |w: &InProcessWorker| w.metric("promo_assigned_partitions");
    assert!(
        wait_until(Duration::from_secs(30), || assigned(&a) == 1.0
            && assigned(&b) == 1.0),
        "a and b hold one input partition each"
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let rounds = 30;
    let records = orders("Q", 3 * rounds, 21);
    let send = |record: &Vec<u8>, partition: i32| {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&names.input)
                    .partition(partition)
                    .payload(record.as_slice()),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    };
    let flush = || {
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
    };
    let count = |isolation, expected: usize, timeout| {
        tools::read_topic_as(brokers(), &names.conversions, expected, timeout, isolation)
            .expect("read conversions")
            .len()
    };
    let mut stuck = Vec::new();
    for round in 0..rounds {
        send(&records[3 * round], 0);
        send(&records[3 * round + 1], 1);
        flush();
        let both = 3 * round + 2;
        assert_eq!(
            count(Isolation::ReadUncommitted, both, Duration::from_secs(30)),
            both,
            "round {round}: both conversions written"
        );
        send(&records[3 * round + 2], 0);
        flush();
        let all = both + 1;
        assert_eq!(
            count(Isolation::ReadUncommitted, all, Duration::from_secs(30)),
            all,
            "round {round}: the lone conversion written"
        );
        if count(Isolation::ReadCommitted, all, Duration::from_secs(3)) < all {
            eprintln!(
                "round {round}: the lone conversion is written but invisible to read_committed"
            );
            stuck.push(round);
        }
    }
    a.request_stop();
    b.request_stop();
    eprintln!("stuck in {} of {rounds} rounds: {stuck:?}", stuck.len());
    assert!(
        stuck.is_empty(),
        "committed conversions left invisible in rounds {stuck:?}"
    );
}

/// A read_committed reader must skip the records of an aborted transaction: Kafka lists
/// aborted transactions in fetch responses for that. tansu (memory and `s3://` storage alike:
/// both are its dynostore engine, whose `aborted_transactions` returns nothing) does not, so
/// this fails there. `PROMO_TEST_BROKER=durable` runs it on the durable broker.
#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn aborted_transactions_are_hidden_from_read_committed() {
    let names = Names::new("broker-abort");
    tools::create_topics(brokers(), &[&names.conversions], 1).expect("topic");
    let topic = names.conversions.as_str();
    let producer = transactional(&names.transactional_id);
    let send = |payload: &str| {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(0)
                    .key("k")
                    .payload(payload),
            )
            .map_err(|(e, _)| e)
            .expect("send");
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
    };
    producer.begin_transaction().expect("begin");
    send("aborted");
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
    producer.begin_transaction().expect("begin");
    send("committed");
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    let read = tools::read_topic_as(
        brokers(),
        topic,
        2,
        Duration::from_secs(5),
        Isolation::ReadCommitted,
    )
    .expect("read");
    let payloads: Vec<String> = read
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned())
        .collect();
    eprintln!("read_committed reader got {payloads:?}");
    assert_eq!(payloads, ["committed"], "only the committed record");
}

/// Two transactional producers write 20 records each to partition 0 of a new topic at the same
/// moment.
fn concurrent_writers(topic: &str) {
    tools::create_topics(brokers(), &[topic], 1).expect("topic");
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        for writer in ["a", "b"] {
            let barrier = &barrier;
            s.spawn(move || {
                // Transactional, as the workers are: tansu records the transaction's range
                // between giving a batch its offset and storing it.
                let producer = transactional(&format!("{topic}-{writer}"));
                let payload = writer.repeat(300);
                producer.begin_transaction().expect("begin");
                barrier.wait();
                for _ in 0..20 {
                    producer
                        .send(
                            BaseRecord::<str, str>::to(topic)
                                .partition(0)
                                .payload(&payload),
                        )
                        .map_err(|(e, _)| e)
                        .expect("send");
                }
                while producer.in_flight_count() > 0 {
                    producer.poll(Duration::from_millis(1));
                }
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit");
            });
        }
    });
}

/// tansu answers ListOffsets(EARLIEST) with the base offset of the batch written longest ago.
/// When two producers write to one partition at once their puts can finish out of order, and a
/// reader that starts at "the beginning" then skips the first batch: the cause of the
/// two-worker test's missing conversions (see docs/dev-notes/2026-12-05-commit-path-and-tansu.md).
#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn earliest_offset_can_skip_the_first_batch() {
    let names = Names::new("broker-earliest");
    let rounds = 20;
    let mut skipped = Vec::new();
    for round in 0..rounds {
        let topic = format!("{}-{round}", names.conversions);
        concurrent_writers(&topic);
        let (_, low, _) =
            tools::end_offsets(brokers(), &topic, Isolation::ReadUncommitted).expect("offsets")[0];
        if low > 0 {
            eprintln!("round {round}: earliest offset {low} of 40 records");
            skipped.push(round);
        }
    }
    eprintln!(
        "earliest offset past the first batch in {} of {rounds} rounds",
        skipped.len()
    );
    assert!(
        skipped.is_empty(),
        "ListOffsets(EARLIEST) skipped records in rounds {skipped:?}"
    );
}

/// Our reader (`kafka::tools`, behind every test's output check) gets every record however the
/// broker answers ListOffsets(EARLIEST); the rounds where tansu's answer would have skipped
/// records are counted, so a run shows whether the case was exercised.
#[test]
fn the_reader_starts_at_offset_zero_whatever_earliest_says() {
    let names = Names::new("reader-from-zero");
    let rounds = 10;
    let mut exercised = 0;
    for round in 0..rounds {
        let topic = format!("{}-{round}", names.conversions);
        concurrent_writers(&topic);
        for isolation in [Isolation::ReadCommitted, Isolation::ReadUncommitted] {
            let read =
                tools::read_topic_as(brokers(), &topic, 40, Duration::from_secs(10), isolation)
                    .expect("read");
            assert_eq!(
                read.len(),
                40,
                "round {round}: {isolation:?} reader got every record"
            );
            assert_eq!(
                read.iter().map(|r| r.offset).min(),
                Some(0),
                "round {round}: from offset 0"
            );
        }
        let (_, low, _) =
            tools::end_offsets(brokers(), &topic, Isolation::ReadUncommitted).expect("offsets")[0];
        exercised += usize::from(low > 0);
    }
    eprintln!("the broker's earliest offset was past offset 0 in {exercised} of {rounds} rounds");
}

/// tansu gives a batch its offset before it stores the batch, and a fetch answers with the next
/// stored batch at or after the offset asked for. A reader that fetches while producers'
/// batches on one partition are stored out of order therefore skips the late one for good,
/// though a reader that starts afterwards gets it (docs/dev-notes/2026-12-05-commit-path-and-tansu.md,
/// 2d). Each round reads while four transactional producers write, then once more from offset 0.
/// On 2026-12-07 it did not catch a skip in 50 rounds (this one and an earlier two-writer
/// version): the window is a task switch inside one produce request. The evidence for the
/// defect is tansu's source and the two-worker failure, not this probe.
#[test]
#[ignore = "evidence about the broker, not a check of the worker; run with --ignored"]
fn a_reader_during_concurrent_writes_gets_every_batch() {
    const WRITERS: usize = 4;
    const EACH: usize = 200;
    let names = Names::new("broker-late-batch");
    let rounds = 20;
    let mut skipped = Vec::new();
    for round in 0..rounds {
        let topic = format!("{}-{round}", names.conversions);
        tools::create_topics(brokers(), &[&topic], 1).expect("topic");
        let producers: Vec<BaseProducer> = (0..WRITERS)
            .map(|w| transactional(&format!("{topic}-{w}")))
            .collect();
        let mut during = tools::TopicReader::open(brokers(), &topic, Isolation::ReadUncommitted)
            .expect("reader");
        std::thread::scope(|s| {
            for producer in &producers {
                s.spawn(|| {
                    producer.begin_transaction().expect("begin");
                    for i in 0..EACH {
                        producer
                            .send(
                                BaseRecord::<str, str>::to(&topic)
                                    .partition(0)
                                    .payload(&format!("{i:0>300}")),
                            )
                            .map_err(|(e, _)| e)
                            .expect("send");
                        producer.poll(Duration::ZERO);
                    }
                    producer
                        .commit_transaction(Duration::from_secs(30))
                        .expect("commit");
                });
            }
            during
                .read_until(
                    std::time::Instant::now() + Duration::from_secs(10),
                    |records| records.len() >= WRITERS * EACH,
                )
                .expect("read while writing");
        });
        let after = tools::read_topic_as(
            brokers(),
            &topic,
            WRITERS * EACH,
            Duration::from_secs(10),
            Isolation::ReadUncommitted,
        )
        .expect("read after");
        if during.records().len() < after.len() {
            eprintln!(
                "round {round}: the reader during the writes got offsets {}, a reader afterwards {}",
                support::offset_runs(during.records()),
                support::offset_runs(&after)
            );
            skipped.push(round);
        }
    }
    eprintln!(
        "a reader skipped records in {} of {rounds} rounds",
        skipped.len()
    );
    assert!(
        skipped.is_empty(),
        "records skipped by a reader in rounds {skipped:?}"
    );
}
