//! The live part: an open-loop generator at a fixed rate on a fresh topic, the sustainable rate
//! of a contender (the highest rate whose lag stays bounded), then its end-to-end latency at
//! 10%, 50% and 80% of that rate.

use std::path::Path;
use std::time::{Duration, Instant};

use promo_attribution::kafka::tools::create_topics;
use promo_attribution::settings::Delivery;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

use super::{
    BatchTotals, Files, PARTITIONS, Probe, env_number, free_port, kafka_settings, now_micros,
    peer_command, spawn_logged, worker_command,
};

/// What runs live: the worker binary at this path, or a Python peer script.
#[derive(Debug, Clone, Copy)]
pub enum Live<'a> {
    Worker(&'a Path),
    Peer(&'a str),
}

/// The order with `order_id` replaced; the id carries the send time for the latency reader, so
/// the order's event and click times, and therefore its decision, stay those of the corpus.
fn with_order_id(order: &str, id: &str) -> String {
    const FIELD: &str = "\"order_id\":\"";
    let start = order.find(FIELD).expect("order has an order_id") + FIELD.len();
    let end = start + order[start..].find('"').expect("closed string");
    format!("{}{id}{}", &order[..start], &order[end..])
}

/// The `order_id` of a conversion, without parsing the rest of it.
fn order_id_of(conversion: &[u8]) -> Option<&str> {
    const FIELD: &[u8] = b"\"order_id\":\"";
    let start = conversion.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let len = conversion[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&conversion[start..start + len]).ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// An open-loop order source: sends whatever the schedule says is due, whether or not the
/// contender keeps up, and optionally reads conversions back for their latency.
struct Generator<'a> {
    producer: BaseProducer,
    reader: BaseConsumer,
    conversions: String,
    topic: String,
    orders: &'a [String],
    sent: usize,
}

impl<'a> Generator<'a> {
    fn new(brokers: &str, topic: &str, conversions: &str, orders: &'a [String]) -> Generator<'a> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // A real order source batches a little too; one produce request per order would
            // measure the broker's per-request overhead, not the pipeline.
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{topic}-latency-reader"))
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("reader");
        Generator {
            producer,
            reader,
            conversions: conversions.to_string(),
            topic: topic.to_string(),
            orders,
            sent: 0,
        }
    }

    /// Sends at `rate` for `seconds`; with `tag`, also reads the conversions and returns the
    /// latencies (seconds) of this step's, read until all arrived or `tail` seconds after the
    /// last send.
    fn run(&mut self, rate: f64, seconds: f64, tag: Option<&str>, tail: f64) -> Vec<f64> {
        let total = (rate * seconds) as usize;
        let mut latencies = Vec::with_capacity(total);
        if tag.is_some() {
            // Skip the conversions of earlier steps instead of parsing them now, which would
            // delay this step's.
            let mut assignment = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                assignment
                    .add_partition_offset(&self.conversions, p, Offset::End)
                    .expect("assign");
            }
            self.reader.assign(&assignment).expect("assign");
        }
        let started = Instant::now();
        let mut step_sent = 0usize;
        let grace = Duration::from_secs_f64(seconds + tail);
        while started.elapsed() < grace
            && (step_sent < total || (tail > 0.0 && latencies.len() < total))
        {
            let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
            while step_sent < due {
                let id = match tag {
                    Some(tag) => format!("{tag}-{}-{}", self.sent, now_micros()),
                    None => format!("s-{}", self.sent),
                };
                let order = with_order_id(&self.orders[self.sent % self.orders.len()], &id);
                let mut record = BaseRecord::to(&self.topic).key(&id).payload(&order);
                while let Err((_, back)) = self.producer.send(record) {
                    record = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                self.sent += 1;
                step_sent += 1;
            }
            self.producer.poll(Duration::ZERO);
            if tag.is_none() {
                if step_sent >= total {
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            // Read for at most 2 ms, then go back to sending: a reader that drained everything
            // before sending again would turn the open loop into bursts.
            let read_until = Instant::now() + Duration::from_millis(2);
            while Instant::now() < read_until {
                let Some(Ok(message)) = self.reader.poll(Duration::from_millis(1)) else {
                    break;
                };
                let received = now_micros();
                let Some(value) = message.payload() else {
                    continue;
                };
                let Some(id) = order_id_of(value) else {
                    continue;
                };
                let mut parts = id.split('-');
                if parts.next() != tag {
                    continue;
                }
                if let Some(sent_at) = parts.nth(1).and_then(|s| s.parse::<i64>().ok()) {
                    latencies.push((received - sent_at) as f64 / 1e6);
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        latencies
    }
}

/// A contender running on its own topics, with the probe of its committed input offsets and the
/// generator that feeds it.
struct Stage<'a> {
    contender: super::Contender,
    probe: Probe,
    generator: Generator<'a>,
    topics: Vec<String>,
    /// The worker's admin port (a Python peer has none).
    admin_port: Option<u16>,
}

impl<'a> Stage<'a> {
    /// Creates the topics `<run>.<name>.*`, starts the contender on them and waits until it has
    /// joined, loaded its table and committed something.
    fn start(
        brokers: &str,
        run: &str,
        name: &str,
        files: &Files,
        orders: &'a [String],
        (delivery, who): (Delivery, Live<'_>),
    ) -> Stage<'a> {
        let input = format!("{run}.{name}.orders");
        let out = format!("{run}.{name}");
        let group = format!("{run}-{name}");
        let kafka = kafka_settings(brokers, &input, &out, &group, delivery);
        create_topics(
            brokers,
            &[
                &input,
                &kafka.conversions_topic,
                &kafka.alerts_topic,
                &kafka.dlq_topic,
            ],
            PARTITIONS,
        )
        .expect("topics");
        let port = free_port();
        let (command, admin_port) = match who {
            Live::Worker(bin) => (worker_command(bin, files, &kafka, port, &[]), Some(port)),
            Live::Peer(script) => (
                peer_command(files, script, &kafka, &out).expect("python is set"),
                None,
            ),
        };
        let contender = spawn_logged(command, &files.dir.join(format!("{name}.log")));
        let probe = Probe::new(brokers, &group, &input);
        let mut generator = Generator::new(brokers, &input, &kafka.conversions_topic, orders);
        generator.run(500.0, 1.0, None, 0.0);
        let warm_deadline = Instant::now() + Duration::from_secs(90);
        while probe.committed() < generator.sent as i64 && Instant::now() < warm_deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        Stage {
            contender,
            probe,
            generator,
            topics: vec![
                input,
                kafka.conversions_topic,
                kafka.alerts_topic,
                kafka.dlq_topic,
            ],
            admin_port,
        }
    }

    fn catch_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.probe.committed() < self.generator.sent as i64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lag(&self) -> i64 {
        self.generator.sent as i64 - self.probe.committed()
    }

    /// Stops the contender; returns the stage's topics.
    fn stop(self) -> Vec<String> {
        self.contender.stop();
        std::mem::forget(self.generator.reader);
        self.topics
    }
}

/// Restarts the run's private broker (`BENCH_FRESH_BROKER`, a shell command set by
/// `scripts/bench`) so that the latency steps run on a broker that has not served the rate
/// search: tansu's commits slow down as transactions accumulate
/// (docs/dev-notes/2026-12-05-commit-path-and-tansu.md), which a broker that keeps its
/// transactions compacted, as Kafka does, would not show. Returns whether it restarted.
fn fresh_broker() -> bool {
    let Ok(command) = std::env::var("BENCH_FRESH_BROKER") else {
        return false;
    };
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .expect("run BENCH_FRESH_BROKER");
    assert!(
        status.success(),
        "BENCH_FRESH_BROKER ({command}) failed: {status}"
    );
    true
}

/// Sustainable rate and latency of one contender in one delivery mode, on a fresh topic; the
/// latency steps on a fresh broker too, where `BENCH_FRESH_BROKER` says how to get one.
pub fn live(
    brokers: &str,
    run: &str,
    files: &Files,
    orders: &[String],
    (delivery, mode, who): (Delivery, &str, Live<'_>),
    drain_rate: f64,
) -> Value {
    let mut stage = Stage::start(
        brokers,
        run,
        &format!("live-{mode}"),
        files,
        orders,
        (delivery, who),
    );
    let mut topics = Vec::new();
    let step_secs = env_number("BENCH_STEP_SECS", 10) as f64;
    // Short enough that the 10 % and 50 % points, run one after the other on one broker, stay
    // below the record counts at which tansu's memory storage slows down: with no worker at
    // all, a probe producing 14,500 orders/s and reading them back saw p99 15 ms on an empty
    // topic and 939 ms once the topic held 145,000 records (BENCHMARKS.md, "The broker's own
    // latency as its topics fill"). Kafka does not slow down this way.
    let latency_secs = env_number("BENCH_LATENCY_SECS", 6) as f64;
    // Bounded lag: at the end of a step at most half a second of input behind, and grown by at
    // most a tenth of a second of input over the second half. Start under the drain rate (the
    // generator and the latency reader share the machine), go up while it holds, halfway back
    // when it does not.
    let mut steps = Vec::new();
    let start = env_number("BENCH_LIVE_START", 0) as f64;
    let mut rate = if start > 0.0 {
        start
    } else {
        (drain_rate * 0.8).max(200.0)
    };
    let mut best: f64 = 0.0;
    let mut lowest_failed = f64::INFINITY;
    for _ in 0..5 {
        // Two halves, so a lag that is still growing at the end fails even if it is small. The
        // conversions are read as in the latency steps, so the machine carries the same load.
        stage.generator.run(rate, step_secs / 2.0, Some("s"), 0.0);
        let lag_mid = stage.lag();
        stage.generator.run(rate, step_secs / 2.0, Some("s"), 0.0);
        let lag = stage.lag();
        let held = (lag as f64) <= rate * 0.5 && ((lag - lag_mid) as f64) <= rate * 0.1;
        eprintln!(
            "live {mode}: {rate:.0}/s for {step_secs} s: lag {lag_mid} at half time, {lag} at end ({})",
            if held { "held" } else { "not held" }
        );
        steps.push(json!({"rate": rate, "lag_at_half": lag_mid, "lag_at_end": lag, "held": held}));
        stage.catch_up(Duration::from_secs(60));
        if held {
            best = best.max(rate);
            rate = (rate * 1.15).min((rate + lowest_failed) / 2.0);
        } else {
            lowest_failed = lowest_failed.min(rate);
            rate = if best > 0.0 {
                (best + rate) / 2.0
            } else {
                rate * 0.75
            };
        }
    }
    let sustainable = best;
    let fresh = sustainable > 0.0 && {
        let searched = stage.stop();
        let restarted = fresh_broker();
        // A restarted memory broker has dropped them already.
        if !restarted {
            topics.extend(searched);
        }
        let name = format!("latency-{mode}");
        stage = Stage::start(brokers, run, &name, files, orders, (delivery, who));
        restarted
    };
    let mut latency = Vec::new();
    for (tag, fraction) in [("l10", 0.1), ("l50", 0.5), ("l80", 0.8)] {
        if sustainable <= 0.0 {
            break;
        }
        let rate = sustainable * fraction;
        // A backlog left by an overloaded step would be measured as latency.
        stage.catch_up(Duration::from_secs(120));
        let lag_at_start = stage.lag();
        let totals = || stage.admin_port.and_then(BatchTotals::read);
        let before = totals();
        let mut samples = stage.generator.run(rate, latency_secs, Some(tag), 5.0);
        // What the worker's batches were meanwhile: how long they stayed open bounds latency.
        let batches = before
            .zip(totals())
            .map(|(before, after)| after.means_since(before));
        samples.sort_by(f64::total_cmp);
        let expected = (rate * latency_secs) as usize;
        eprintln!(
            "latency {mode} at {:.0}% ({rate:.0}/s): {} of {expected} samples, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            fraction * 100.0,
            samples.len(),
            percentile(&samples, 0.5) * 1e3,
            percentile(&samples, 0.99) * 1e3,
            percentile(&samples, 0.999) * 1e3
        );
        latency.push(json!({
            "load": fraction,
            "rate": rate,
            "lag_at_start": lag_at_start,
            "expected": expected,
            "samples": samples.len(),
            "p50_ms": percentile(&samples, 0.5) * 1e3,
            "p99_ms": percentile(&samples, 0.99) * 1e3,
            "p999_ms": percentile(&samples, 0.999) * 1e3,
            "mean_batch": batches.map(|b| b.0),
            "mean_commit_ms": batches.map(|b| b.1),
        }));
        stage.catch_up(Duration::from_secs(30));
    }
    topics.extend(stage.stop());
    json!({
        "mode": mode,
        "steps": steps,
        "sustainable_rate": sustainable,
        "latency_on_fresh_broker": fresh,
        "latency": latency,
        "topics": topics,
    })
}
