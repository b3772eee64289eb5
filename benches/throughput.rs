//! The Kafka half of the benchmark suite (issue 6; `scripts/bench` runs it): the real worker
//! binary and its Python peers, measured against the physical limit in one run on one broker.
//!
//! 1. Limit: the broker's produce-only and consume-only rates, and a raw rdkafka
//!    consume→produce passthrough with the worker's own client settings, batching and
//!    transactions (in process).
//! 2. Backlog drain of the same topic by every contender, each with its own group and output
//!    topics: passthrough, the worker binary (exactly-once and at-least-once), the hand-tuned
//!    confluent-kafka loop and the Quix Streams application (`bench/peers/`); then the worker
//!    exactly-once with the detectors off and on (`detectors`), on a second backlog of the same
//!    orders with customer fields, against the run's Redis.
//! 3. Live (`live`): for the worker in each mode and the confluent-kafka loop exactly-once, the
//!    sustainable rate (the highest open-loop input rate whose lag stays bounded), then
//!    end-to-end latency at 10%, 50% and 80% of it.
//!
//! A drain is timed between the group's first and last committed-offset advance as seen by a
//! probe, the same way for every contender, so group joins, table loads and interpreter start-up
//! are not counted as throughput. CPU is utime+stime from /proc over the same window (`cpu`):
//! the contender's process tree, or for the in-process passthrough the threads it started; the
//! broker's process; with detectors, the Redis process. Memory is the contender's VmHWM.
//!
//! Environment (all optional): BENCH_DIR (results, logs, generated table; default target/bench),
//! BENCH_ORDERS (backlog, default 200000), BENCH_PEER_SECS (how long the Python peers drain it at
//! most, default 60), BENCH_STEP_SECS (sustainable-rate steps, default 10), BENCH_LATENCY_SECS (per
//! load level, default 15), BENCH_REPEAT (second passthrough/worker pair, default 1), BENCH_PYTHON
//! (the venv's python; peers are skipped when unset), BENCH_WORKER_BIN (default
//! target/release/promo-attribution), BENCH_BROKERS and BENCH_BROKER_PID (default: the services of
//! `scripts/services`), BENCH_PERF (1 = one extra worker drain under `perf record`, not counted;
//! BENCH_PERF_CALLGRAPH=1 adds DWARF call graphs), BENCH_BATCH_RECORDS / BENCH_BATCH_MS (every
//! contender's batches), BENCH_ONLY (drains to keep, by output-name prefix), BENCH_LIVE (0 skips
//! the live part), BENCH_LIVE_START (first live rate instead of 0.9x the drain rate),
//! BENCH_LIVE_MODES (live modes to keep: eos, alo, patched-eos, confluent-eos), BENCH_REDIS_URL and
//! BENCH_REDIS_PID (the detectors' Redis; default: the services of `scripts/services`, and the pair
//! is skipped without one), BENCH_DETECTORS (0 skips the detectors pair), BENCH_DETECTOR_SECS (how
//! long the worker with detectors drains at most, default 90), BENCH_WORKER_SETS (extra `--set`s
//! for the worker, `;`-separated), BENCH_BIG_BATCH (0 skips the 10000 / 500 ms variants),
//! BENCH_QUIX_LOGLEVEL, BENCH_PATCHED_WORKER_BIN (a second worker binary, built with a patch,
//! drained and run live beside the first), BENCH_PASS_FLUSH=timed (the passthrough times its flush
//! apart from the commit).
//!
//! The passthrough also runs with a 1 ms poll loop instead of rust-rdkafka's flush before each
//! commit: that flush polls in steps of up to 100 ms, which costs ~100 ms per batch, while the
//! broker's commit itself takes about 1 ms. That variant is the limit once the client is fixed.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

#[path = "throughput/cpu.rs"]
mod cpu;
#[path = "throughput/detectors.rs"]
mod detectors;
#[path = "throughput/live.rs"]
mod live;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cpu::{cpu_seconds, new_threads_cpu_seconds, peak_rss_mb, thread_ids, tree_cpu_seconds};
use live::Live;
use promo_attribution::codes::{CodeTable, MatchType};
use promo_attribution::kafka::tools::{create_topics, produce_records, read_topic};
use promo_attribution::kafka::{consumer_config, producer_config};
use promo_attribution::settings::{Delivery, KafkaSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::corpus::{Corpus, orders as corpus_orders};
use support::{Synthetic, W3};

const SEED: u64 = 0x7e57_0001;
const PARTITIONS: i32 = 3;
/// Records and milliseconds of the throughput-leaning batch variant.
const BIG_BATCH: (usize, u64) = (10_000, 500);
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn services_env(key: &str) -> Option<String> {
    let up = Command::new("bash")
        .arg(format!("{ROOT}/scripts/services"))
        .arg("up")
        .status()
        .expect("scripts/services runs");
    assert!(up.success(), "scripts/services up failed");
    let env = Command::new("bash")
        .arg(format!("{ROOT}/scripts/services"))
        .arg("env")
        .output()
        .expect("scripts/services env runs");
    String::from_utf8_lossy(&env.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {key}=")))
        .map(|v| v.trim_matches('"').to_string())
}

fn brokers() -> String {
    std::env::var("BENCH_BROKERS")
        .ok()
        .or_else(|| services_env("PROMO_KAFKA_BROKERS"))
        .expect("a broker: BENCH_BROKERS or scripts/services")
}

fn broker_pid() -> u32 {
    if let Some(pid) = std::env::var("BENCH_BROKER_PID")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        return pid;
    }
    std::fs::read_dir(format!("{ROOT}/target/services"))
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok).find(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with("kafka-") && name.ends_with(".pid")
            })
        })
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .and_then(|p| p.trim().parse().ok())
        .expect("broker pid: BENCH_BROKER_PID or target/services/kafka-*.pid")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Committed offsets of one group on the input topic, summed over partitions.
struct Probe {
    // librdkafka can hang destroying a consumer that queried committed offsets; a benchmark
    // process can afford to leak it.
    consumer: std::mem::ManuallyDrop<BaseConsumer>,
    partitions: TopicPartitionList,
}

impl Probe {
    fn written(&self, topic: &str) -> Option<i64> {
        (0..PARTITIONS)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .ok()
                    .map(|(_, high)| high)
            })
            .sum()
    }

    fn new(brokers: &str, group: &str, topic: &str) -> Probe {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("probe consumer");
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(topic, p);
        }
        Probe {
            consumer: std::mem::ManuallyDrop::new(consumer),
            partitions,
        }
    }

    fn committed(&self) -> i64 {
        self.consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(5))
            .map_or(0, |c| {
                c.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum()
            })
    }
}

/// What is being measured: a child process, or the passthrough on a thread of this process
/// (with the ids of the threads that existed before it started, which are not its own).
enum Contender {
    Child(Child),
    Thread(std::thread::JoinHandle<()>, Arc<AtomicBool>, HashSet<u32>),
}

impl Contender {
    fn pid(&self) -> u32 {
        match self {
            Contender::Child(child) => child.id(),
            Contender::Thread(..) => std::process::id(),
        }
    }

    /// CPU seconds so far of what does the contender's work (see `cpu`).
    fn cpu_seconds(&self) -> f64 {
        match self {
            Contender::Child(child) => tree_cpu_seconds(child.id()),
            Contender::Thread(_, _, before) => new_threads_cpu_seconds(before),
        }
    }

    /// How `cpu_seconds` is measured, for the report.
    fn cpu_source(&self) -> &'static str {
        match self {
            Contender::Child(_) => "process",
            Contender::Thread(..) => "threads",
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self {
            Contender::Child(child) => child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| format!("exited early: {status}")),
            Contender::Thread(handle, ..) => handle
                .is_finished()
                .then(|| "passthrough thread ended early".to_string()),
        }
    }

    /// SIGTERM (the worker drains and exits 0), then SIGKILL after a grace period.
    fn stop(self) {
        match self {
            Contender::Child(mut child) => {
                // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(15);
                while child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Contender::Thread(handle, stop, _) => {
                stop.store(true, Ordering::SeqCst);
                let _ = handle.join();
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Drained {
    name: String,
    records: i64,
    seconds: f64,
    cpu: f64,
    /// "process" (the contender's process tree), "threads" (the bench threads it started) or
    /// "bench process" (everything the bench process did in the window).
    cpu_source: &'static str,
    broker_cpu: f64,
    /// CPU of the Redis the detectors use, when the drain ran with detectors.
    redis_cpu: Option<f64>,
    peak_rss_mb: Option<f64>,
    /// Mean batch size and commit time (ms), from the worker's own metrics.
    batches: Option<(f64, f64)>,
    /// Records in the contender's conversions topic afterwards (sum of high watermarks): a
    /// check that it wrote one output per order, whatever its speed.
    conversions_written: Option<i64>,
    error: Option<String>,
}

impl Drained {
    fn rate(&self) -> f64 {
        if self.error.is_some() || self.seconds <= 0.0 {
            0.0
        } else {
            self.records as f64 / self.seconds
        }
    }

    fn json(&self) -> Value {
        let per_m = 1e6 / self.records.max(1) as f64;
        json!({
            "name": self.name,
            "records": self.records,
            "seconds": self.seconds,
            "rate": self.rate(),
            "cpu_s_per_m": self.cpu * per_m,
            "cpu_source": self.cpu_source,
            "broker_cpu_s_per_m": self.broker_cpu * per_m,
            "redis_cpu_s_per_m": self.redis_cpu.map(|c| c * per_m),
            "peak_rss_mb": self.peak_rss_mb,
            "mean_batch": self.batches.map(|b| b.0),
            "mean_commit_ms": self.batches.map(|b| b.1),
            "conversions_written": self.conversions_written,
            "error": self.error,
        })
    }
}

/// What a drain watches besides the contender and the broker.
#[derive(Default)]
struct Watch<'a> {
    /// Records the contender under `perf record` into this file.
    perf_out: Option<&'a Path>,
    /// The worker's admin port, for its batch metrics.
    admin_port: Option<u16>,
    /// The Redis whose CPU is counted with the contender's (detectors on).
    redis_pid: Option<u32>,
}

/// Counters at one committed-offset advance.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    committed: i64,
    cpu: f64,
    broker_cpu: f64,
    redis_cpu: f64,
}

/// Times one contender from the group's first committed-offset advance until `target` records
/// are committed, or until `cap` after that advance (a slow contender is timed on the part of
/// the backlog it got through), then stops it.
fn drain(
    name: &str,
    probe: &Probe,
    target: i64,
    cap: Duration,
    mut contender: Contender,
    watch: Watch<'_>,
) -> Drained {
    let broker = broker_pid();
    let pid = contender.pid();
    // Joining, loading the table and starting an interpreter are not throughput, but a
    // contender that never commits must still end.
    let start_deadline = Instant::now() + Duration::from_secs(180);
    let mut first: Option<Sample> = None;
    let mut last = Sample {
        at: Instant::now(),
        committed: 0,
        cpu: 0.0,
        broker_cpu: 0.0,
        redis_cpu: 0.0,
    };
    let mut result = Drained {
        name: name.to_string(),
        cpu_source: contender.cpu_source(),
        ..Drained::default()
    };
    let mut perf: Option<Child> = None;
    loop {
        if let Some(why) = contender.exited() {
            result.error = Some(why);
            break;
        }
        let committed = probe.committed();
        let now = Instant::now();
        if committed > last.committed {
            last = Sample {
                at: now,
                committed,
                cpu: contender.cpu_seconds(),
                broker_cpu: cpu_seconds(broker),
                redis_cpu: watch.redis_pid.map_or(0.0, cpu_seconds),
            };
            result.peak_rss_mb = match contender {
                Contender::Child(_) => peak_rss_mb(pid),
                Contender::Thread(..) => None,
            };
        }
        match first {
            None if committed > 0 => {
                first = Some(last);
                perf = watch.perf_out.map(|out| {
                    let mut perf = Command::new("perf");
                    perf.args(["record", "-F", "999"]);
                    // Call graphs from DWARF (no frame pointers in librdkafka or our release
                    // build): which caller pays for a hot leaf such as `clock_gettime`.
                    if std::env::var("BENCH_PERF_CALLGRAPH").is_ok_and(|v| v == "1") {
                        perf.args(["--call-graph", "dwarf,32768"]);
                    }
                    perf.arg("-o")
                        .arg(out)
                        .args(["-p", &pid.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("perf record starts")
                });
            }
            None if now > start_deadline => {
                result.error = Some("no offset committed within 180 s".into());
                break;
            }
            Some(first) if committed >= target || now - first.at > cap => {
                if last.committed <= first.committed {
                    result.error = Some(format!(
                        "nothing committed after the first batch in {cap:?}"
                    ));
                } else if committed < target {
                    eprintln!(
                        "{name}: stopped after {cap:?}, {} of {target} committed",
                        committed
                    );
                }
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let (Some(first), None) = (first, &result.error) {
        result.records = last.committed - first.committed;
        result.seconds = (last.at - first.at).as_secs_f64();
        result.cpu = last.cpu - first.cpu;
        result.broker_cpu = last.broker_cpu - first.broker_cpu;
        result.redis_cpu = watch.redis_pid.map(|_| last.redis_cpu - first.redis_cpu);
    }
    if let Some(perf) = perf {
        // SAFETY: SIGINT to the perf child we spawned, so it writes its data file.
        unsafe {
            libc::kill(perf.id() as i32, libc::SIGINT);
        }
        let _ = perf.wait_with_output();
    }
    result.batches = watch.admin_port.and_then(worker_batches);
    contender.stop();
    let per_m = |cpu: f64| cpu * 1e6 / result.records.max(1) as f64;
    match &result.error {
        None => eprintln!(
            "{name}: {} records in {:.2} s = {:.0}/s, cpu {:.1} s/M ({}), broker {:.1} s/M, redis {:?} s/M, hwm {:?} MB, batch/commit ms {:?}",
            result.records,
            result.seconds,
            result.rate(),
            per_m(result.cpu),
            result.cpu_source,
            per_m(result.broker_cpu),
            result.redis_cpu.map(|c| (per_m(c) * 10.0).round() / 10.0),
            result.peak_rss_mb.map(|m| m.round()),
            result.batches
        ),
        Some(e) => eprintln!("{name}: FAILED: {e}"),
    }
    result
}

fn kafka_settings(
    brokers: &str,
    input: &str,
    out: &str,
    group: &str,
    delivery: Delivery,
) -> KafkaSettings {
    let mut kafka = KafkaSettings {
        brokers: brokers.to_string(),
        input_topic: input.to_string(),
        conversions_topic: format!("{out}.conversions"),
        alerts_topic: format!("{out}.alerts"),
        dlq_topic: format!("{out}.dlq"),
        group_id: group.to_string(),
        transactional_id: format!("{group}-tx"),
        delivery,
        ..KafkaSettings::default()
    };
    kafka.batch_max_records =
        env_number("BENCH_BATCH_RECORDS", kafka.batch_max_records as u64) as usize;
    kafka.batch_max_ms = env_number("BENCH_BATCH_MS", kafka.batch_max_ms);
    if out.ends_with("-big") {
        // Throughput-leaning batches: the transaction commit is amortised over 5x the records.
        kafka.batch_max_records = BIG_BATCH.0;
        kafka.batch_max_ms = BIG_BATCH.1;
    }
    // The local broker's first group join waits half the session timeout.
    kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "500".into());
    kafka
}

/// How the passthrough waits for its outputs before committing a batch.
#[derive(Debug, Clone, Copy)]
enum Flush {
    /// As the worker does: `commit_transaction` (or `flush`), which in rust-rdkafka 0.39 polls
    /// in steps of up to 100 ms.
    Library,
    /// The same, but the flush is called (and timed) on its own before the commit.
    Timed,
    /// Polls 1 ms at a time until nothing is in flight, then commits.
    Spin,
}

/// The limit: the worker's clients, configuration, batching and transactions, copying each
/// record instead of deciding it. Runs until `stop`.
fn passthrough(kafka: &KafkaSettings, stop: &AtomicBool, flush: Flush) {
    let mut phases: Vec<[Duration; 3]> = Vec::new();
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
    let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut in_batch = 0usize;
    let mut batch_started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) {
            if in_batch == 0 {
                if transactional {
                    producer.begin_transaction().expect("begin");
                }
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
            in_batch += 1;
        }
        let due = in_batch > 0
            && (in_batch >= kafka.batch_max_records
                || batch_started.elapsed() >= Duration::from_millis(kafka.batch_max_ms));
        if due {
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in &next {
                offsets
                    .add_partition_offset(&kafka.input_topic, *partition, Offset::Offset(*offset))
                    .expect("offset");
            }
            let t0 = Instant::now();
            match flush {
                Flush::Library => {}
                Flush::Timed => producer.flush(Timeout::Never).expect("flush"),
                Flush::Spin => {
                    while producer.in_flight_count() > 0 {
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
            let t1 = Instant::now();
            if transactional {
                let group = consumer.group_metadata().expect("group metadata");
                producer
                    .send_offsets_to_transaction(&offsets, &group, Timeout::Never)
                    .expect("send offsets");
                let t2 = Instant::now();
                producer.commit_transaction(Timeout::Never).expect("commit");
                phases.push([t1 - t0, t2 - t1, t2.elapsed()]);
            } else {
                // After a spin this returns at once; otherwise it is the worker's wait.
                producer.flush(Duration::from_secs(30)).expect("flush");
                consumer
                    .commit(&offsets, rdkafka::consumer::CommitMode::Async)
                    .expect("commit");
            }
            in_batch = 0;
        }
    }
    consumer.unsubscribe();
    if !phases.is_empty() {
        let mean = |i: usize| {
            phases.iter().map(|p| p[i].as_secs_f64()).sum::<f64>() / phases.len() as f64 * 1e3
        };
        eprintln!(
            "  passthrough: {} transactions, mean ms: flush {:.1}, send offsets {:.1}, commit {:.1}",
            phases.len(),
            mean(0),
            mean(1),
            mean(2)
        );
    }
}

/// Paths of the generated table files and the binaries the contenders run from.
struct Files {
    dir: PathBuf,
    codes: PathBuf,
    worker_bin: PathBuf,
    /// The worker built with a patch applied (`scripts/bench --patch`), measured beside it.
    patched_bin: Option<PathBuf>,
    python: Option<PathBuf>,
}

fn spawn_logged(mut command: Command, log: &Path) -> Contender {
    let file = std::fs::File::create(log).expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    Contender::Child(command.spawn().expect("contender starts"))
}

/// A free loopback port for the worker's admin endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The worker's batch and commit counters from its /metrics.
#[derive(Debug, Clone, Copy)]
struct BatchTotals {
    batches: f64,
    records: f64,
    commits: f64,
    commit_secs: f64,
}

impl BatchTotals {
    fn read(admin_port: u16) -> Option<BatchTotals> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some(BatchTotals {
            batches: value("promo_batch_size_records_count")?,
            records: value("promo_batch_size_records_sum")?,
            commits: value("promo_commit_latency_seconds_count")?,
            commit_secs: value("promo_commit_latency_seconds_sum")?,
        })
    }

    /// Mean batch size (records) and mean commit time (ms) of the batches after `earlier`.
    fn means_since(self, earlier: BatchTotals) -> (f64, f64) {
        (
            (self.records - earlier.records) / (self.batches - earlier.batches),
            (self.commit_secs - earlier.commit_secs) / (self.commits - earlier.commits) * 1e3,
        )
    }
}

/// Mean batch size and commit time from the worker's /metrics, to show what bounds a drain.
fn worker_batches(admin_port: u16) -> Option<(f64, f64)> {
    let zero = BatchTotals {
        batches: 0.0,
        records: 0.0,
        commits: 0.0,
        commit_secs: 0.0,
    };
    Some(BatchTotals::read(admin_port)?.means_since(zero))
}

fn worker_command(
    bin: &Path,
    files: &Files,
    kafka: &KafkaSettings,
    admin_port: u16,
    extra: &[String],
) -> Command {
    let mut command = Command::new(bin);
    command.arg("run");
    let delivery = match kafka.delivery {
        Delivery::ExactlyOnce => "exactly-once",
        Delivery::AtLeastOnce => "at-least-once",
    };
    let sets = [
        format!("kafka.brokers={}", kafka.brokers),
        format!("kafka.group_id={}", kafka.group_id),
        format!("kafka.input_topic={}", kafka.input_topic),
        format!("kafka.conversions_topic={}", kafka.conversions_topic),
        format!("kafka.alerts_topic={}", kafka.alerts_topic),
        format!("kafka.dlq_topic={}", kafka.dlq_topic),
        format!("kafka.transactional_id={}", kafka.transactional_id),
        format!("kafka.delivery={delivery}"),
        format!("kafka.batch_max_records={}", kafka.batch_max_records),
        format!("kafka.batch_max_ms={}", kafka.batch_max_ms),
        "kafka.consumer.session.timeout.ms=6000".into(),
        "kafka.consumer.heartbeat.interval.ms=500".into(),
        "codes.source=files".into(),
        format!("codes.codes_file={}", files.codes.display()),
        W3.worker_limit(),
        format!("admin.listen=127.0.0.1:{admin_port}"),
    ];
    for set in sets {
        command.arg("--set").arg(set);
    }
    // The contender's own extras (the detectors), then those for experiments, e.g.
    // "kafka.consumer.fetch.wait.max.ms=10".
    for set in extra {
        command.arg("--set").arg(set);
    }
    for set in std::env::var("BENCH_WORKER_SETS")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.is_empty())
    {
        command.arg("--set").arg(set);
    }
    command
}

fn peer_command(files: &Files, script: &str, kafka: &KafkaSettings, out: &str) -> Option<Command> {
    let python = files.python.as_ref()?;
    let mut command = Command::new(python);
    let delivery = match kafka.delivery {
        Delivery::ExactlyOnce => "exactly-once",
        Delivery::AtLeastOnce => "at-least-once",
    };
    command
        .current_dir(format!("{ROOT}/bench/peers"))
        .arg(script)
        .args(["--brokers", &kafka.brokers])
        .args(["--input", &kafka.input_topic])
        .args(["--out", out])
        .args(["--group", &kafka.group_id])
        .arg("--codes")
        .arg(&files.codes)
        .args(["--delivery", delivery]);
    if script.starts_with("confluent") {
        command
            .args(["--batch", &kafka.batch_max_records.to_string()])
            .args(["--batch-ms", &kafka.batch_max_ms.to_string()]);
    } else {
        command
            .arg("--state-dir")
            .arg(files.dir.join(format!("quix-state-{out}")))
            .args([
                "--loglevel",
                &std::env::var("BENCH_QUIX_LOGLEVEL").unwrap_or_else(|_| "WARNING".into()),
            ]);
    }
    Some(command)
}

/// Writes the synthetic table as the CSV the worker and the peers load.
fn write_codes_csv(synthetic: &Synthetic, path: &Path) {
    let mut out = csv::Writer::from_path(path).expect("codes file");
    out.write_record([
        "Promo Code",
        "Program Id",
        "Media Id",
        "Type",
        "Credit Rule",
        "Match Mode",
        "Priority",
    ])
    .expect("write");
    for e in &synthetic.entries {
        let policy = match e.credit_policy {
            Some(promo_attribution::codes::CreditPolicy::Always) => "ALWAYS",
            Some(promo_attribution::codes::CreditPolicy::Involved) => "INVOLVED",
            _ => "WINNER",
        };
        let mode = if e.match_type == MatchType::Regex {
            "RE"
        } else {
            "LI"
        };
        out.write_record([
            &*e.code,
            &*e.program_id,
            e.owner_partner_id.as_deref().unwrap_or(""),
            "TRACKING",
            policy,
            mode,
            &e.priority.to_string(),
        ])
        .expect("write");
    }
    out.flush().expect("flush codes file");
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let brokers = brokers();
    let dir = PathBuf::from(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| format!("{ROOT}/target/bench")),
    );
    std::fs::create_dir_all(&dir).expect("bench dir");
    let records = env_number("BENCH_ORDERS", 200_000) as usize;
    let peer_secs = Duration::from_secs(env_number("BENCH_PEER_SECS", 60));
    let detector_secs = Duration::from_secs(env_number("BENCH_DETECTOR_SECS", 90));
    let run = format!("bench-{}-{}", std::process::id(), now_micros() / 1_000_000);
    let load_before = load_average();
    let started_at = chrono::Utc::now();

    let synthetic = Synthetic::generate(&W3, SEED);
    let corpus = Corpus::from(&synthetic);
    let files = Files {
        codes: dir.join("codes.csv"),
        worker_bin: std::env::var("BENCH_WORKER_BIN").map_or_else(
            |_| PathBuf::from(format!("{ROOT}/target/release/promo-attribution")),
            PathBuf::from,
        ),
        python: std::env::var("BENCH_PYTHON").ok().map(PathBuf::from),
        patched_bin: std::env::var("BENCH_PATCHED_WORKER_BIN")
            .ok()
            .map(PathBuf::from),
        dir: dir.clone(),
    };
    assert!(
        files.worker_bin.exists(),
        "{} is missing: cargo build --release --locked",
        files.worker_bin.display()
    );
    write_codes_csv(&synthetic, &files.codes);
    let table = CodeTable::build(
        synthetic.entries,
        synthetic.partners,
        "bench-w3",
        "bench",
        W3.build_options(),
    )
    .expect("table builds");
    let orders = corpus_orders(&table, &corpus, records, SEED);
    // Only the contenders hold the table from here on.
    drop(table);
    let mean_bytes = orders.iter().map(String::len).sum::<usize>() as f64 / orders.len() as f64;
    let records_bytes: Vec<Vec<u8>> = orders.iter().map(|o| o.clone().into_bytes()).collect();

    let input = format!("{run}.orders");
    let repeat = env_number("BENCH_REPEAT", 1) > 0;
    let mut plan: Vec<(&str, &str, Delivery)> = vec![
        (
            "passthrough exactly-once",
            "pass-eos",
            Delivery::ExactlyOnce,
        ),
        ("worker exactly-once", "worker-eos", Delivery::ExactlyOnce),
        (
            "passthrough at-least-once",
            "pass-alo",
            Delivery::AtLeastOnce,
        ),
        ("worker at-least-once", "worker-alo", Delivery::AtLeastOnce),
        (
            "passthrough exactly-once, 1 ms poll flush",
            "pass-eos-spin",
            Delivery::ExactlyOnce,
        ),
        (
            "passthrough at-least-once, 1 ms poll flush",
            "pass-alo-spin",
            Delivery::AtLeastOnce,
        ),
    ];
    if repeat {
        plan.push((
            "passthrough exactly-once (2nd)",
            "pass-eos2",
            Delivery::ExactlyOnce,
        ));
        plan.push((
            "worker exactly-once (2nd)",
            "worker-eos2",
            Delivery::ExactlyOnce,
        ));
    }
    if files.patched_bin.is_some() {
        plan.extend([
            (
                "patched worker exactly-once",
                "pworker-eos",
                Delivery::ExactlyOnce,
            ),
            (
                "patched worker at-least-once",
                "pworker-alo",
                Delivery::AtLeastOnce,
            ),
        ]);
    }
    if env_number("BENCH_BIG_BATCH", 1) > 0 {
        plan.extend([
            (
                "passthrough exactly-once, batch 10000 / 500 ms",
                "pass-eos-big",
                Delivery::ExactlyOnce,
            ),
            (
                "worker exactly-once, batch 10000 / 500 ms",
                "worker-eos-big",
                Delivery::ExactlyOnce,
            ),
        ]);
    }
    // Detectors off and on, back to back, on the same backlog of orders with customer fields.
    let redis_url = detectors::redis_url();
    if redis_url.is_some() && env_number("BENCH_DETECTORS", 1) > 0 {
        plan.extend([
            (
                "detectors off: worker exactly-once",
                "det-off",
                Delivery::ExactlyOnce,
            ),
            (
                "detectors on: worker exactly-once",
                "det-on",
                Delivery::ExactlyOnce,
            ),
        ]);
    }
    if files.python.is_some() {
        plan.extend([
            (
                "confluent-kafka loop exactly-once",
                "confluent-eos",
                Delivery::ExactlyOnce,
            ),
            (
                "confluent-kafka loop at-least-once",
                "confluent-alo",
                Delivery::AtLeastOnce,
            ),
            (
                "Quix Streams exactly-once",
                "quix-eos",
                Delivery::ExactlyOnce,
            ),
            (
                "Quix Streams at-least-once",
                "quix-alo",
                Delivery::AtLeastOnce,
            ),
        ]);
    }
    // For iterating on one contender: BENCH_ONLY=quix,confluent keeps the drains whose output
    // name starts with one of these.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let keep: Vec<&str> = only.split(',').collect();
        plan.retain(|(_, out, _)| keep.iter().any(|k| out.starts_with(k)));
    }
    let perf = std::env::var("BENCH_PERF").is_ok_and(|v| v == "1");
    if perf {
        plan.push((
            "worker exactly-once (perf)",
            "worker-perf",
            Delivery::ExactlyOnce,
        ));
    }
    let mut topics: Vec<String> = plan
        .iter()
        .flat_map(|(_, out, _)| {
            ["conversions", "alerts", "dlq"].map(|t| format!("{run}.{out}.{t}"))
        })
        .collect();
    topics.push(input.clone());
    let detector_input = format!("{run}.det-orders");
    let with_detectors = plan.iter().any(|(_, out, _)| out.starts_with("det-"));
    if with_detectors {
        topics.push(detector_input.clone());
    }
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    create_topics(&brokers, &topic_refs, PARTITIONS).expect("topics");

    // The limit, first: the broker alone.
    let broker = broker_pid();
    let mut drains = Vec::new();
    for (name, work) in [
        ("broker produce-only", true),
        ("broker consume-only", false),
    ] {
        let (cpu0, broker0) = (cpu_seconds(std::process::id()), cpu_seconds(broker));
        let t0 = Instant::now();
        if work {
            produce_records(&brokers, &input, &records_bytes).expect("produce");
        } else {
            let read =
                read_topic(&brokers, &input, records, Duration::from_secs(300)).expect("read");
            assert_eq!(read.len(), records);
        }
        // The clients are gone by now, so their threads cannot be told apart: all of this
        // process, which does nothing else meanwhile.
        let measured = Drained {
            name: name.into(),
            records: records as i64,
            seconds: t0.elapsed().as_secs_f64(),
            cpu: cpu_seconds(std::process::id()) - cpu0,
            cpu_source: "bench process",
            broker_cpu: cpu_seconds(broker) - broker0,
            ..Drained::default()
        };
        eprintln!("{name}: {:.0}/s", measured.rate());
        drains.push(measured);
    }
    drop(records_bytes);
    if with_detectors {
        let records = detectors::corpus(&orders, SEED ^ 0xde7e);
        produce_records(&brokers, &detector_input, &records).expect("produce");
    }

    for (name, out, delivery) in &plan {
        let group = format!("{run}-{out}");
        let detector_pair = out.starts_with("det-");
        let input = if detector_pair {
            &detector_input
        } else {
            &input
        };
        let worker_sets = match (&redis_url, *out == "det-on") {
            (Some(url), true) => detectors::worker_sets(url, &format!("{run}:")),
            _ => Vec::new(),
        };
        let out = format!("{run}.{out}");
        let kafka = kafka_settings(&brokers, input, &out, &group, *delivery);
        let probe = Probe::new(&brokers, &group, input);
        // The probe's own connections are up before a passthrough's threads are told apart.
        probe.committed();
        let log = dir.join(format!("{}.log", out.rsplit('.').next().unwrap_or("x")));
        let patched = name.starts_with("patched worker");
        let admin_port = (patched || detector_pair || name.starts_with("worker")).then(free_port);
        // With the detectors on the worker is several times slower: like the peers, it is timed
        // on the part of the backlog it gets through in a bounded time.
        let worker_cap = if worker_sets.is_empty() {
            Duration::from_secs(300)
        } else {
            detector_secs
        };
        let (contender, target, cap) = if name.starts_with("passthrough") {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let flush = if out.ends_with("-spin") {
                Flush::Spin
            } else if std::env::var("BENCH_PASS_FLUSH").is_ok_and(|v| v == "timed") {
                Flush::Timed
            } else {
                Flush::Library
            };
            let before = thread_ids();
            let handle = std::thread::spawn(move || passthrough(&kafka, &flag, flush));
            (
                Contender::Thread(handle, stop, before),
                records as i64,
                Duration::from_secs(300),
            )
        } else if admin_port.is_some() {
            let bin = match (&files.patched_bin, patched) {
                (Some(bin), true) => bin,
                _ => &files.worker_bin,
            };
            (
                spawn_logged(
                    worker_command(
                        bin,
                        &files,
                        &kafka,
                        admin_port.unwrap_or_default(),
                        &worker_sets,
                    ),
                    &log,
                ),
                records as i64,
                worker_cap,
            )
        } else {
            let script = if name.starts_with("Quix") {
                "quix_worker.py"
            } else {
                "confluent_worker.py"
            };
            let command = peer_command(&files, script, &kafka, &out).expect("python is set");
            (spawn_logged(command, &log), records as i64, peer_secs)
        };
        let perf_out = name
            .ends_with("(perf)")
            .then(|| dir.join("worker.perf.data"));
        let watch = Watch {
            perf_out: perf_out.as_deref(),
            admin_port,
            redis_pid: (!worker_sets.is_empty())
                .then(detectors::redis_pid)
                .flatten(),
        };
        let mut drained = drain(name, &probe, target, cap, contender, watch);
        drained.conversions_written = probe.written(&format!("{out}.conversions"));
        drains.push(drained);
    }

    // The fastest drain whose name starts with `prefix` and carries the variant `tag` (or no
    // variant at all when `tag` is empty).
    let fastest_drain = |prefix: &str, tag: &str| {
        drains
            .iter()
            .filter(|d| d.name.starts_with(prefix) && !d.name.ends_with("(perf)"))
            .filter(|d| d.error.is_none() && d.records > 0)
            .filter(|d| {
                if tag.is_empty() {
                    !d.name.contains("batch") && !d.name.contains("poll flush")
                } else {
                    d.name.contains(tag)
                }
            })
            .max_by(|a, b| a.rate().total_cmp(&b.rate()))
    };
    let fastest = |prefix: &str, tag: &str| fastest_drain(prefix, tag).map_or(0.0, Drained::rate);
    let best = |prefix: &str| fastest(prefix, "");
    let big = |prefix: &str| fastest(prefix, "batch 10000");
    let spin = |prefix: &str| fastest(prefix, "poll flush");
    // CPU seconds per order of the same drain `best` picks, with the Redis of the detectors.
    let cpu = |prefix: &str, tag: &str| {
        fastest_drain(prefix, tag).map(|d| (d.cpu + d.redis_cpu.unwrap_or(0.0)) / d.records as f64)
    };
    let cpu_ratio = |a: &str, b: &str| cpu(a, "").zip(cpu(b, "")).map(|(a, b)| a / b);
    let mut lives = Vec::new();
    let worker = Live::Worker(files.worker_bin.as_path());
    let mut live_modes = vec![
        (
            Delivery::ExactlyOnce,
            "eos",
            worker,
            best("worker exactly-once"),
        ),
        (
            Delivery::AtLeastOnce,
            "alo",
            worker,
            best("worker at-least-once"),
        ),
    ];
    if let Some(bin) = &files.patched_bin {
        live_modes.push((
            Delivery::ExactlyOnce,
            "patched-eos",
            Live::Worker(bin.as_path()),
            best("patched worker exactly-once"),
        ));
    }
    // The hand-tuned loop, found and measured the same way, for latency side by side.
    let loop_rate = best("confluent-kafka loop exactly-once");
    if files.python.is_some() && loop_rate > 0.0 {
        live_modes.push((
            Delivery::ExactlyOnce,
            "confluent-eos",
            Live::Peer("confluent_worker.py"),
            loop_rate,
        ));
    }
    if env_number("BENCH_LIVE", 1) == 0 {
        live_modes.clear();
    }
    // For iterating on one mode: BENCH_LIVE_MODES=confluent-eos.
    if let Ok(only) = std::env::var("BENCH_LIVE_MODES") {
        let keep: Vec<&str> = only.split(',').collect();
        live_modes.retain(|(_, mode, _, _)| keep.contains(mode));
    }
    for (delivery, mode, who, drain_rate) in live_modes {
        lives.push(live::live(
            &brokers,
            &run,
            &files,
            &orders,
            (delivery, mode, who),
            drain_rate,
        ));
    }
    for live in &lives {
        if let Some(names) = live["topics"].as_array() {
            topics.extend(names.iter().filter_map(|t| t.as_str().map(str::to_string)));
        }
    }
    let results = json!({
        "started_at": started_at.to_rfc3339(),
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "run": run,
        "load_before": load_before,
        "load_after": load_average(),
        "orders": records,
        "peer_secs": peer_secs.as_secs(),
        "detector_secs": detector_secs.as_secs(),
        "mean_order_bytes": mean_bytes,
        "table": {"exact": W3.exact_total(), "regex": W3.regex_total()},
        "batch": {"max_records": kafka_settings(&brokers, "", "", "", Delivery::ExactlyOnce).batch_max_records,
                  "max_ms": kafka_settings(&brokers, "", "", "", Delivery::ExactlyOnce).batch_max_ms},
        "librdkafka": rdkafka::util::get_rdkafka_version().1,
        "drains": drains.iter().map(Drained::json).collect::<Vec<_>>(),
        "live": lives,
        "ratios": {
            "worker_over_passthrough_eos": best("worker exactly-once") / best("passthrough exactly-once"),
            "worker_over_passthrough_eos_big_batch": big("worker") / big("passthrough"),
            "worker_over_spin_passthrough_eos": best("worker exactly-once") / spin("passthrough exactly-once"),
            "patched_worker_over_spin_passthrough_eos": best("patched worker exactly-once") / spin("passthrough exactly-once"),
            "patched_worker_over_confluent_eos": best("patched worker exactly-once") / best("confluent-kafka loop exactly-once"),
            "patched_worker_over_quix_eos": best("patched worker exactly-once") / best("Quix Streams exactly-once"),
            "worker_over_spin_passthrough_alo": best("worker at-least-once") / spin("passthrough at-least-once"),
            "worker_over_passthrough_alo": best("worker at-least-once") / best("passthrough at-least-once"),
            "worker_over_confluent_eos": best("worker exactly-once") / best("confluent-kafka loop exactly-once"),
            "worker_over_quix_eos": best("worker exactly-once") / best("Quix Streams exactly-once"),
            "worker_over_confluent_alo": best("worker at-least-once") / best("confluent-kafka loop at-least-once"),
            "worker_over_quix_alo": best("worker at-least-once") / best("Quix Streams at-least-once"),
            // CPU per order of the worker / of the other contender (lower is better for the
            // worker; the targets are <= 0.1 against Quix and <= 0.3 against the loop).
            "worker_cpu_over_quix_eos": cpu_ratio("worker exactly-once", "Quix Streams exactly-once"),
            "worker_cpu_over_quix_alo": cpu_ratio("worker at-least-once", "Quix Streams at-least-once"),
            "worker_cpu_over_confluent_eos": cpu_ratio("worker exactly-once", "confluent-kafka loop exactly-once"),
            "worker_cpu_over_confluent_alo": cpu_ratio("worker at-least-once", "confluent-kafka loop at-least-once"),
            "worker_cpu_over_passthrough_eos": cpu_ratio("worker exactly-once", "passthrough exactly-once"),
            "worker_cpu_over_passthrough_alo": cpu_ratio("worker at-least-once", "passthrough at-least-once"),
            // Detectors: drain rate on / off (target >= 0.85), and CPU per order on / off with
            // the Redis the detectors use counted on the "on" side.
            "detectors_on_over_off_eos": best("detectors on") / best("detectors off"),
            "detectors_cpu_on_over_off_eos": cpu_ratio("detectors on", "detectors off"),
        },
        // Deleted by scripts/bench once this process is gone: librdkafka 2.12 crashed here
        // (strcmp on a null topic name in a metadata update) when tansu deleted topics that
        // clients of this process still had in their metadata cache.
        "topics": topics,
    });
    let path = dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&results).expect("serializes"),
    )
    .expect("results written");
    println!(
        "{}",
        serde_json::to_string_pretty(&results["ratios"]).unwrap_or_default()
    );
    eprintln!("results: {}", path.display());
    // Leaked clients (see Probe) keep librdkafka threads alive; exit without waiting on them.
    std::process::exit(0);
}
