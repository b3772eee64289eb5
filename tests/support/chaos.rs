//! The chaos suite's stream and verifier: orders produced at a steady pace while faults are
//! injected, and one verdict per scenario that checks what a paying user depends on. Every
//! order has exactly one distinct conversion (or, for a poison record, one dead letter); every
//! repeat is byte-identical; every decision and alert equals the offline engine's for the same
//! table. The verdict is printed as one `CHAOS|…` row, which `scripts/chaos` collects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use promo_attribution::kafka::tools;

use promo_attribution::settings::Settings;

use super::redis::offline_run;
use super::{
    ChildWorker, GroupOffsets, Names, brokers, field, orders, payloads, read_outputs, text,
    wait_until,
};

/// Records produced in the background, `per_chunk` at a time with `pause` between chunks, so
/// faults land while the stream flows rather than after it.
pub struct Stream {
    produced: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    total: usize,
}

impl Stream {
    pub fn start(topic: &str, records: Vec<Vec<u8>>, per_chunk: usize, pause: Duration) -> Stream {
        let produced = Arc::new(AtomicUsize::new(0));
        let total = records.len();
        let counter = produced.clone();
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || {
            let new_producer = || {
                tools::RecordProducer::new(brokers())
                    .unwrap_or_else(|e| panic!("a producer for {topic}: {e}"))
            };
            let mut producer = new_producer();
            for chunk in records.chunks(per_chunk.max(1)) {
                // A broker restart can leave the idempotent producer fatally failed (the broker
                // forgot its sequence numbers); an upstream producer would start a new one and
                // send the chunk again, repeats included, and so does this one.
                let mut attempts = 0;
                let sent = loop {
                    match producer.send_all(&topic, chunk) {
                        Ok(sent) => break sent,
                        Err(e) if attempts < 5 => {
                            attempts += 1;
                            eprintln!("produce to {topic} failed ({e}); new producer, resending");
                            producer = new_producer();
                        }
                        Err(e) => panic!("produce to {topic}: {e}"),
                    }
                };
                assert_eq!(sent, chunk.len(), "every record of a chunk produced");
                counter.fetch_add(sent, Ordering::SeqCst);
                std::thread::sleep(pause);
            }
        });
        Stream {
            produced,
            thread: Some(thread),
            total,
        }
    }

    /// The suite's usual pace: the records in about 200 chunks, 50 ms apart.
    pub fn paced(topic: &str, records: Vec<Vec<u8>>) -> Stream {
        let per_chunk = (records.len() / 200).max(1);
        Stream::start(topic, records, per_chunk, Duration::from_millis(50))
    }

    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> bool {
        self.produced() >= self.total
    }

    /// Waits for the producer to finish; a producer that failed fails the test.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            panic!("the stream's producer failed");
        }
    }
}

/// What a scenario expects: the offline engine's conversions and alerts for the valid orders,
/// and the poison records that must come out as dead letters.
pub struct Expected {
    pub conversions: Vec<Vec<u8>>,
    pub alerts: Vec<Vec<u8>>,
    pub poison: Vec<Vec<u8>>,
}

/// The counts of one scenario's outputs against [`Expected`].
#[derive(Debug, Default)]
pub struct Verdict {
    pub orders: usize,
    /// Orders with no conversion (or poison records with no dead letter).
    pub lost: usize,
    /// Byte-identical copies beyond the first (allowed: tansu shows aborted batches).
    pub repeats: usize,
    /// Orders (or alert ids) written twice with different bytes.
    pub non_identical: usize,
    /// Distinct conversions or alerts that differ from the offline engine's.
    pub mismatches: usize,
    pub alerts: usize,
    pub missing_alerts: usize,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.non_identical == 0
            && self.mismatches == 0
            && self.missing_alerts == 0
    }
}

/// Reads the outputs of `names` until every expected order, alert and dead letter is there (or
/// `deadline` passes), then judges them.
pub fn verify(names: &Names, expected: &Expected, deadline: Duration) -> Verdict {
    let order_ids: BTreeSet<String> = expected
        .conversions
        .iter()
        .map(|c| field(c, "order_id"))
        .collect();
    let alert_ids: BTreeSet<String> = expected
        .alerts
        .iter()
        .map(|a| field(a, "alert_id"))
        .collect();
    let conversions =
        payloads(&read_outputs(&names.conversions, "order_id", &order_ids, deadline).settled());
    let alerts = payloads(&read_outputs(&names.alerts, "alert_id", &alert_ids, deadline).settled());
    // Dead letters repeat too after a kill; read the whole topic rather than a count.
    let mut dead_letters: Vec<Vec<u8>> = Vec::new();
    let poison: BTreeSet<&[u8]> = expected.poison.iter().map(Vec::as_slice).collect();
    wait_until(deadline, || {
        dead_letters.clear();
        tools::read_to_end(
            brokers(),
            &names.dlq,
            tools::Isolation::ReadUncommitted,
            Duration::from_secs(30),
            |_, _, payload| dead_letters.push(payload.to_vec()),
        )
        .unwrap_or_else(|e| panic!("read {}: {e}", names.dlq));
        let seen: BTreeSet<&[u8]> = dead_letters.iter().map(Vec::as_slice).collect();
        poison.is_subset(&seen)
    });

    let mut verdict = Verdict {
        orders: order_ids.len() + expected.poison.len(),
        alerts: alert_ids.len(),
        ..Verdict::default()
    };
    verdict.lost += judge(
        &conversions,
        &expected.conversions,
        "order_id",
        &mut verdict,
    );
    verdict.missing_alerts += judge(&alerts, &expected.alerts, "alert_id", &mut verdict);
    let letters: BTreeSet<&[u8]> = dead_letters.iter().map(Vec::as_slice).collect();
    let unlettered: Vec<String> = expected
        .poison
        .iter()
        .filter(|p| !letters.contains(p.as_slice()))
        .map(|p| text(p))
        .collect();
    if !unlettered.is_empty() {
        eprintln!("poison records without a dead letter: {unlettered:?}");
    }
    verdict.lost += unlettered.len();
    verdict
}

/// Adds to `verdict` the identical repeats, the keys written with different bytes and the
/// distinct records unlike the expected ones; returns how many expected keys were never written
/// (lost orders or missing alerts, as the caller counts them). Per key the set of distinct
/// records is compared: a detector alert is written again as its count grows, each update with
/// the same id.
fn judge(actual: &[Vec<u8>], expected: &[Vec<u8>], key: &str, verdict: &mut Verdict) -> usize {
    let mut written: BTreeMap<String, Vec<&Vec<u8>>> = BTreeMap::new();
    for record in actual {
        written.entry(field(record, key)).or_default().push(record);
    }
    let mut wanted: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for record in expected {
        wanted
            .entry(field(record, key))
            .or_default()
            .insert(record.clone());
    }
    let (mut repeats, mut non_identical, mut mismatches, mut missing) = (0, 0, 0, 0);
    for (id, want) in &wanted {
        let Some(copies) = written.get(id) else {
            missing += 1;
            if missing <= 10 {
                eprintln!("no {key} {id} was written");
            }
            continue;
        };
        let distinct: BTreeSet<Vec<u8>> = copies.iter().map(|r| r.to_vec()).collect();
        repeats += copies.len() - distinct.len();
        if distinct.len() > want.len() {
            non_identical += 1;
        }
        if distinct != *want {
            mismatches += 1;
            if mismatches <= 3 {
                eprintln!(
                    "mismatch for {key} {id}:\n  written:  {:?}\n  expected: {:?}",
                    distinct.iter().map(|r| text(r)).collect::<Vec<_>>(),
                    want.iter().map(|r| text(r)).collect::<Vec<_>>()
                );
            }
        }
    }
    // Records for ids nobody expected are mismatches too.
    mismatches += written
        .keys()
        .filter(|id| !wanted.contains_key(*id))
        .count();
    verdict.repeats += repeats;
    verdict.non_identical += non_identical;
    verdict.mismatches += mismatches;
    missing
}

/// Prints the scenario's row for `scripts/chaos` and fails the test unless the verdict is
/// clean.
pub fn report(scenario: &str, verdict: &Verdict, started: Instant, notes: &str) {
    println!(
        "CHAOS|{scenario}|{}|{}|{}|{}|{}|{}|{}|{:.0}|{notes}",
        verdict.orders,
        verdict.lost,
        verdict.repeats,
        verdict.non_identical,
        verdict.mismatches,
        verdict.alerts,
        verdict.missing_alerts,
        started.elapsed().as_secs_f64(),
    );
    assert!(verdict.clean(), "{scenario}: {verdict:?} ({notes})");
}

// ---------------------------------------------------------------------------------------------
// Scenario building blocks

/// How long the outputs of a scenario may take to appear after the faults end.
/// How long a scenario waits for the workers to get somewhere (the next fault's progress, the
/// outputs to settle). The durable broker moves a paced stream about ten times slower than the
/// memory broker on a loaded machine (each produced chunk and each fetch goes through the S3
/// server), so it gets longer.
pub fn settle_deadline() -> Duration {
    Duration::from_secs(if super::durable() { 600 } else { 180 })
}
pub const STOP: Duration = Duration::from_secs(30);

pub fn chaos_orders() -> usize {
    std::env::var("CHAOS_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// Records that are not orders, each different, so each must come out as its own dead letter.
pub fn poison(tag: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!(r#"{{"order_id":"{tag}-poison-{i}","program_id":"#).into_bytes())
        .collect()
}

/// The valid orders with the poison records spread among them.
pub fn interleaved(valid: &[Vec<u8>], poison: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let every = (valid.len() / poison.len().max(1)).max(1);
    let mut bad = poison.iter();
    let mut out = Vec::with_capacity(valid.len() + poison.len());
    for (i, record) in valid.iter().enumerate() {
        out.push(record.clone());
        if i % every == every / 2
            && let Some(b) = bad.next()
        {
            out.push(b.clone());
        }
    }
    out.extend(bad.cloned());
    out
}

/// The stream of a scenario: `count` orders plus poison, produced in about 200 chunks over
/// `spread`, and what the offline engine makes of it with `settings`.
pub fn scenario_stream(
    tag: &str,
    count: usize,
    seed: u64,
    settings: &Settings,
) -> (Vec<Vec<u8>>, Expected) {
    let valid = orders(tag, count, seed);
    let poison = poison(tag, (count / 1000).max(3));
    let (conversions, alerts) = offline_run(&valid, settings);
    let all = interleaved(&valid, &poison);
    (
        all,
        Expected {
            conversions,
            alerts,
            poison,
        },
    )
}

pub fn spawn(names: &Names, id: &str, sets: &[String], log: &std::path::Path) -> ChildWorker {
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    ChildWorker::spawn(names, id, &sets, log)
}

/// Conversion records written so far (committed or not): how far the workers have got.
pub fn conversions_written(names: &Names) -> usize {
    tools::end_offsets(
        brokers(),
        &names.conversions,
        tools::Isolation::ReadUncommitted,
    )
    .map(|ends| ends.iter().map(|(_, _, high)| *high).sum::<i64>())
    .unwrap_or(0)
    .max(0) as usize
}

/// Waits (polling) until the workers have written `fraction` of `expected` conversions, so a
/// fault lands while they work, whatever the backlog: timing faults by what the stream has
/// produced lets a fast producer finish before the workers have started.
pub fn when_converted(names: &Names, expected: usize, fraction: f64) {
    let target = (expected as f64 * fraction) as usize;
    assert!(
        wait_until(settle_deadline(), || conversions_written(names) >= target),
        "the workers stalled at {} of {target} conversions",
        conversions_written(names)
    );
}

pub fn drained(worker: &mut ChildWorker) {
    let status = worker.terminate(STOP);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the worker drains on SIGTERM; log:\n{}",
        worker.log_tail()
    );
}

/// Prints, every `every`, how far a scenario has got at each stage: records produced, conversions
/// written (read_uncommitted end), conversions visible to read_committed readers (the last
/// stable offsets) and input offsets the group has committed. Where a run stalls, these say
/// which stage stopped: the worker's writes, the broker's completion of transactions, or the
/// group's offsets. Stops when dropped.
pub struct ProgressTrace {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressTrace {
    pub fn start(names: &Names, stream: &Stream, every: Duration) -> ProgressTrace {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (names, produced, flag) = (names.clone(), stream.produced.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let group = GroupOffsets::new(&names.group);
            let sum = |ends: Result<Vec<(i32, i64, i64)>, String>| {
                ends.map(|e| e.iter().map(|(_, _, high)| *high).sum::<i64>().to_string())
                    .unwrap_or_else(|e| format!("? ({e})"))
            };
            while !flag.load(Ordering::SeqCst) {
                let input_partitions = tools::partitions(brokers(), &names.input)
                    .map(|p| p.len() as i32)
                    .unwrap_or(0);
                let written = sum(tools::end_offsets(
                    brokers(),
                    &names.conversions,
                    tools::Isolation::ReadUncommitted,
                ));
                let stable = sum(tools::end_offsets(
                    brokers(),
                    &names.conversions,
                    tools::Isolation::ReadCommitted,
                ));
                let committed = group
                    .as_ref()
                    .map_err(String::clone)
                    .and_then(|g| g.fetch(&names.input, input_partitions))
                    .map(|o| {
                        o.iter()
                            .map(|(_, at)| (*at).max(0))
                            .sum::<i64>()
                            .to_string()
                    })
                    .unwrap_or_else(|e| format!("? ({e})"));
                eprintln!(
                    "PROGRESS|{:.1}s|produced {}|written {written}|stable {stable}|group committed {committed}",
                    started.elapsed().as_secs_f64(),
                    produced.load(Ordering::SeqCst),
                );
                let next = Instant::now() + every;
                while Instant::now() < next && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        ProgressTrace {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProgressTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
