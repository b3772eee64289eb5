//! The real pipeline on the local broker, measured against the physical limit in the same run:
//! the broker's produce-only and consume-only rates, a raw rdkafka consume→produce passthrough
//! with the worker's own client settings and transactions, and the worker itself (exactly-once
//! and at-least-once), each draining the same backlog; then end-to-end latency with an open-loop
//! generator at half the worker's drain rate.
//!
//! `cargo bench --bench throughput` (BENCH_ORDERS, default 300000; BENCH_LATENCY_SECS, default 10;
//! BENCH_BATCH_RECORDS and BENCH_BATCH_MS override the batch settings of every run).
//! Starts the local services through `scripts/services` when they are not up.

#[path = "support/mod.rs"]
mod support;

// The allocator the worker binary uses, so the table is laid out the same way.
#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use promo_attribution::admin::Health;
use promo_attribution::codes::CodeTable;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::kafka::tools::{create_topics, produce_records};
use promo_attribution::kafka::worker::{WorkerDeps, run_worker};
use promo_attribution::kafka::{consumer_config, producer_config};
use promo_attribution::metrics::Metrics;
use promo_attribution::settings::{Delivery, Settings};
use promo_attribution::table_source::TableHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use support::corpus::{Corpus, orders as corpus_orders};
use support::{Synthetic, W3};

const SEED: u64 = 0x7e57_0001;
const PARTITIONS: i32 = 3;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn brokers() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let up = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/services"))
        .arg("up")
        .status()
        .expect("scripts/services runs");
    assert!(up.success(), "scripts/services up failed");
    let env = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/services"))
        .arg("env")
        .output()
        .expect("scripts/services env runs");
    String::from_utf8_lossy(&env.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export PROMO_KAFKA_BROKERS="))
        .map(|v| v.trim_matches('"').to_string())
        .expect("services env names the broker")
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn broker_pid() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_dir(format!("{root}/target/services"))
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok).find(|e| {
                e.file_name().to_string_lossy().starts_with("kafka-")
                    && e.file_name().to_string_lossy().ends_with(".pid")
            })
        })
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .map(|p| p.trim().to_string())
        .unwrap_or_default()
}

struct Measured {
    name: String,
    records: usize,
    seconds: f64,
    own_cpu: f64,
    broker_cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// Runs `work` and measures wall time, from the instant `work` reports it got its partitions
/// (a group join takes seconds on the local broker and is not throughput), and the CPU of this
/// process and of the broker.
fn measure(name: &str, records: usize, work: impl FnOnce() -> Instant) -> Measured {
    let broker = broker_pid();
    let (own_before, broker_before) = (cpu_seconds("self"), cpu_seconds(&broker));
    let started = work();
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        name: name.to_string(),
        records,
        seconds,
        own_cpu: cpu_seconds("self") - own_before,
        broker_cpu: cpu_seconds(&broker) - broker_before,
    };
    eprintln!(
        "{name}: {records} records in {seconds:.2} s = {:.0}/s",
        measured.rate()
    );
    measured
}

/// Waits until `group` has committed offsets covering `records` records of `topic`.
fn wait_committed(brokers: &str, group: &str, topic: &str, records: usize) {
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("checker consumer");
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition(topic, p);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let committed = checker
            .committed_offsets(partitions.clone(), Duration::from_secs(5))
            .ok();
        let total: i64 = committed.map_or(0, |c| {
            c.elements()
                .iter()
                .map(|e| {
                    if let Offset::Offset(o) = e.offset() {
                        o
                    } else {
                        0
                    }
                })
                .sum()
        });
        if total as usize >= records {
            break;
        }
        assert!(Instant::now() < deadline, "{group} did not finish");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // librdkafka can hang destroying a consumer that queried committed offsets; a benchmark
    // process can afford to leak it.
    std::mem::forget(checker);
}

fn settings_for(
    brokers: &str,
    input: &str,
    out: &str,
    group: &str,
    delivery: Delivery,
) -> Settings {
    let mut settings = Settings::default();
    let kafka = &mut settings.kafka;
    kafka.brokers = brokers.to_string();
    kafka.input_topic = input.to_string();
    kafka.conversions_topic = format!("{out}.conversions");
    kafka.alerts_topic = format!("{out}.alerts");
    kafka.dlq_topic = format!("{out}.dlq");
    kafka.group_id = group.to_string();
    kafka.transactional_id = format!("{group}-tx");
    kafka.delivery = delivery;
    kafka.batch_max_records =
        env_number("BENCH_BATCH_RECORDS", kafka.batch_max_records as u64) as usize;
    kafka.batch_max_ms = env_number("BENCH_BATCH_MS", kafka.batch_max_ms);
    kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "500".into());
    settings.admin.listen = String::new();
    settings
}

/// The limit: the same clients, configuration, batching and transactions as the worker, but the
/// record is copied instead of decided.
fn passthrough(settings: &Settings, records: usize, stop_after_commit: bool) -> Instant {
    let kafka = &settings.kafka;
    let consumer: BaseConsumer = consumer_config(kafka).create().expect("consumer");
    let producer: BaseProducer = producer_config(kafka, &kafka.transactional_id)
        .create()
        .expect("producer");
    let transactional = kafka.delivery == Delivery::ExactlyOnce;
    if transactional {
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init_transactions");
    }
    consumer
        .subscribe(&[&kafka.input_topic])
        .expect("subscribe");
    let mut done = 0;
    let mut first_record: Option<Instant> = None;
    let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut open = false;
    let mut batch_started = Instant::now();
    while done < records {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            first_record.get_or_insert_with(Instant::now);
            if !open {
                if transactional {
                    producer.begin_transaction().expect("begin");
                }
                open = true;
                batch_started = Instant::now();
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&kafka.conversions_topic);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            while let Err((_, back)) = producer.send(record) {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            next.insert(message.partition(), message.offset() + 1);
            done += 1;
        }
        let due = open
            && (next.values().count() > 0)
            && (done % kafka.batch_max_records == 0
                || done == records
                || batch_started.elapsed() >= Duration::from_millis(kafka.batch_max_ms));
        if due {
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in &next {
                offsets
                    .add_partition_offset(&kafka.input_topic, *partition, Offset::Offset(*offset))
                    .expect("offset");
            }
            if transactional {
                let group = consumer.group_metadata().expect("group metadata");
                producer
                    .send_offsets_to_transaction(&offsets, &group, Timeout::Never)
                    .expect("send offsets");
                producer.commit_transaction(Timeout::Never).expect("commit");
            } else {
                producer.flush(Duration::from_secs(30)).expect("flush");
                consumer
                    .commit(&offsets, rdkafka::consumer::CommitMode::Async)
                    .expect("commit");
            }
            open = false;
        }
    }
    if stop_after_commit {
        consumer.unsubscribe();
    }
    first_record.unwrap_or_else(Instant::now)
}

fn worker(settings: Settings, table: &TableHandle, records: usize) -> Instant {
    let brokers = settings.kafka.brokers.clone();
    let group = settings.kafka.group_id.clone();
    let topic = settings.kafka.input_topic.clone();
    let shutdown = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::new());
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let deps = WorkerDeps {
        settings: Arc::new(settings),
        table: table.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || run_worker(deps))
        .expect("worker thread starts");
    let join_deadline = Instant::now() + Duration::from_secs(60);
    while health.assigned_partitions() == 0 {
        assert!(
            Instant::now() < join_deadline,
            "the worker got no partitions"
        );
        std::thread::park_timeout(Duration::from_millis(1));
    }
    let started = Instant::now();
    wait_committed(&brokers, &group, &topic, records);
    shutdown.store(true, Ordering::SeqCst);
    handle
        .join()
        .expect("worker thread")
        .expect("worker drained");
    report_batches(&metrics);
    started
}

/// Mean batch size and commit time of a worker run, from its own metrics.
fn report_batches(metrics: &Metrics) {
    let text = metrics.render().unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let batches = value("promo_batch_size_count");
    eprintln!(
        "  batches {batches:.0}, mean size {:.0}, mean commit {:.1} ms",
        value("promo_batch_size_sum") / batches,
        value("promo_commit_latency_seconds_sum") / value("promo_commit_latency_seconds_count")
            * 1e3
    );
}

/// Open-loop latency: orders stamped with the time they are produced, at a fixed rate; the
/// latency of each is the time its conversion becomes readable minus that stamp.
fn latency(
    brokers: &str,
    run: &str,
    table: &TableHandle,
    orders: &[Vec<u8>],
    rate: f64,
    seconds: u64,
) -> Vec<f64> {
    let input = format!("{run}.lat.orders");
    let out = format!("{run}.lat");
    create_topics(
        brokers,
        &[
            &input,
            &format!("{out}.conversions"),
            &format!("{out}.alerts"),
            &format!("{out}.dlq"),
        ],
        PARTITIONS,
    )
    .expect("topics");
    let settings = settings_for(
        brokers,
        &input,
        &out,
        &format!("{run}-lat"),
        Delivery::ExactlyOnce,
    );
    let conversions_topic = settings.kafka.conversions_topic.clone();
    let shutdown = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let health = Arc::new(Health::new());
    let deps = WorkerDeps {
        settings: Arc::new(settings),
        table: table.clone(),
        metrics,
        health: health.clone(),
        shutdown: shutdown.clone(),
    };
    let worker = std::thread::spawn(move || run_worker(deps));
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    while health.assigned_partitions() < PARTITIONS as usize {
        assert!(Instant::now() < ready_deadline, "worker got no partitions");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{run}-lat-reader"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(&conversions_topic, p, Offset::Beginning)
            .expect("assign");
    }
    reader.assign(&assignment).expect("assign");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // A real order source batches a little too; one produce request per order would measure
        // the broker's per-request overhead, not the pipeline.
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let total = (rate * seconds as f64) as usize;
    let started = Instant::now();
    let mut sent = 0usize;
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total && started.elapsed() < Duration::from_secs(seconds * 3 + 30) {
        // Open loop: send whatever the schedule says is due, regardless of how the worker keeps up.
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let key = format!("lat-{sent}");
            let order = restamp(&orders[sent % orders.len()], &key, &now);
            let _ = producer.send(
                BaseRecord::to(&input)
                    .key(key.as_str())
                    .payload(order.as_str()),
            );
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(1)) {
            let received = chrono::Utc::now();
            if let Some(value) = message.payload()
                && let Ok(conversion) = serde_json::from_slice::<serde_json::Value>(value)
                && let Some(stamp) = conversion["event_time"].as_str()
                && let Ok(sent_at) = chrono::DateTime::parse_from_rfc3339(stamp)
            {
                latencies.push((received - sent_at.with_timezone(&chrono::Utc)).as_seconds_f64());
            }
        }
    }
    shutdown.store(true, Ordering::SeqCst);
    let _ = worker.join();
    std::mem::forget(reader);
    latencies
}

/// A corpus order with a new id and the current time as its event time. Clicks keep their
/// original times, so some fall outside the referral window; that does not matter for latency.
fn restamp(order: &[u8], order_id: &str, now: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_slice(order).expect("generated order");
    value["order_id"] = serde_json::Value::String(order_id.to_string());
    value["event_time"] = serde_json::Value::String(now.to_string());
    value.to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let brokers = brokers();
    let records = env_number("BENCH_ORDERS", 300_000) as usize;
    let latency_secs = env_number("BENCH_LATENCY_SECS", 10);
    let run = format!("bench-{}", std::process::id());

    let synthetic = Synthetic::generate(&W3, SEED);
    let corpus = Corpus::from(&synthetic);
    let table = CodeTable::build(
        synthetic.entries,
        synthetic.partners,
        "bench-w3",
        "bench",
        BuildOptions::default(),
    )
    .expect("table builds");
    let orders = corpus_orders(&table, &corpus, records, SEED);
    let mean_bytes = orders.iter().map(String::len).sum::<usize>() as f64 / orders.len() as f64;
    let table = TableHandle::new(table);
    let records_bytes: Vec<Vec<u8>> = orders.into_iter().map(String::into_bytes).collect();

    let input = format!("{run}.orders");
    let outputs: Vec<String> = ["pass", "eos", "alo", "pass2", "eos2"]
        .iter()
        .flat_map(|o| ["conversions", "alerts", "dlq"].map(|t| format!("{run}.{o}.{t}")))
        .collect();
    let mut topics: Vec<&str> = outputs.iter().map(String::as_str).collect();
    topics.push(&input);
    create_topics(&brokers, &topics, PARTITIONS).expect("topics");

    let mut results = Vec::new();
    results.push(measure("broker produce-only", records, || {
        let started = Instant::now();
        produce_records(&brokers, &input, &records_bytes).expect("produce");
        started
    }));
    results.push(measure("broker consume-only", records, || {
        let started = Instant::now();
        let read = promo_attribution::kafka::tools::read_topic(
            &brokers,
            &input,
            records,
            Duration::from_secs(300),
        )
        .expect("read");
        assert_eq!(read.len(), records);
        started
    }));
    let plan = [
        (
            "passthrough exactly-once",
            "pass",
            Delivery::ExactlyOnce,
            false,
        ),
        ("worker exactly-once", "eos", Delivery::ExactlyOnce, true),
        ("worker at-least-once", "alo", Delivery::AtLeastOnce, true),
        (
            "passthrough exactly-once (2nd)",
            "pass2",
            Delivery::ExactlyOnce,
            false,
        ),
        (
            "worker exactly-once (2nd)",
            "eos2",
            Delivery::ExactlyOnce,
            true,
        ),
    ];
    for (name, out, delivery, is_worker) in plan {
        let settings = settings_for(
            &brokers,
            &input,
            &format!("{run}.{out}"),
            &format!("{run}-{out}"),
            delivery,
        );
        let measured = if is_worker {
            measure(name, records, || worker(settings, &table, records))
        } else {
            measure(name, records, || {
                let group = settings.kafka.group_id.clone();
                let started = passthrough(&settings, records, true);
                wait_committed(&brokers, &group, &input, records);
                started
            })
        };
        results.push(measured);
    }

    let worker_best = results
        .iter()
        .filter(|m| m.name.starts_with("worker exactly-once"))
        .map(Measured::rate)
        .fold(0.0, f64::max);
    let pass_best = results
        .iter()
        .filter(|m| m.name.starts_with("passthrough"))
        .map(Measured::rate)
        .fold(0.0, f64::max);
    let rate = (worker_best * 0.5).max(100.0);
    let mut latencies = latency(&brokers, &run, &table, &records_bytes, rate, latency_secs);
    latencies.sort_by(f64::total_cmp);

    println!(
        "\n| Run | Records | Seconds | Records/s | Bench process CPU-s per M | Broker CPU-s per M |"
    );
    println!("|---|---|---|---|---|---|");
    for m in &results {
        let per_m = 1e6 / m.records as f64;
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
            m.name,
            m.records,
            m.seconds,
            m.rate(),
            m.own_cpu * per_m,
            m.broker_cpu * per_m
        );
    }
    println!(
        "\nmean order size {mean_bytes:.0} bytes; table {} exact + {} regex codes",
        W3.exact_total(),
        W3.regex_total()
    );
    println!(
        "worker / passthrough (exactly-once, best of two each): {:.2}",
        worker_best / pass_best
    );
    println!(
        "end-to-end latency at {rate:.0} orders/s (half the worker's drain rate), {} samples: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50) * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        percentile(&latencies, 0.999) * 1e3
    );
}
