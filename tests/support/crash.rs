//! A worker of a two-member exactly-once group is SIGKILLed and never restarted (a pod lost
//! during a scale-in): does the survivor take every partition and commit everything? Shared by
//! the test binaries that run it on the memory broker and on the durable one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use promo_attribution::kafka::tools::{self, Isolation};
use promo_attribution::settings::Settings;

use super::{
    ChildWorker, Names, assert_same_records, brokers, group_by, group_offsets, offline_reference,
    order_ids, orders, read_outputs, text, wait_until,
};

pub const PARTITIONS: i32 = 6;

/// What happened after the kill.
#[derive(Debug)]
pub struct Takeover {
    /// From the kill until the survivor's log shows it owns every input partition.
    pub all_partitions_after: Option<Duration>,
    /// From the last order produced (the stream keeps coming after the kill) until the
    /// group's committed offsets cover every input record.
    pub committed_after: Option<Duration>,
    /// Whether the killed member left a transaction open on an output partition (the output's
    /// last stable offset behind its high watermark right after the kill).
    pub left_open: bool,
    /// The committed offsets when the wait ended, and where they should be.
    pub committed: Vec<(i32, i64)>,
    pub ends: BTreeMap<i32, i64>,
    pub survivor_log: String,
}

impl Takeover {
    /// Prints the times, then fails unless the survivor owned every partition and the group
    /// committed every input record.
    pub fn assert_complete(&self, test: &str) {
        eprintln!(
            "{test}: all {PARTITIONS} partitions after {:?}, everything committed {:?} after the \
             last order, dead member left a transaction open: {}",
            self.all_partitions_after, self.committed_after, self.left_open
        );
        assert!(
            self.all_partitions_after.is_some(),
            "the survivor never owned every partition; log:\n{}",
            self.survivor_log
        );
        assert!(
            self.committed_after.is_some(),
            "the group's committed offsets {:?} never reached the input's ends {:?} (dead member \
             left a transaction open: {}); survivor log:\n{}",
            self.committed,
            self.ends,
            self.left_open,
            self.survivor_log
        );
    }
}

/// The partitions `log` says its worker owns now: the assigned ones minus the revoked ones,
/// from the worker's "partitions assigned" / "partitions revoked" lines in order.
pub fn owned_partitions(log: &Path) -> BTreeSet<i32> {
    ownership(log)
        .last()
        .map(|(_, owned)| owned.clone())
        .unwrap_or_default()
}

/// Every change of ownership in `log`: the line's timestamp and what the worker owned after it.
pub fn ownership(log: &Path) -> Vec<(Option<DateTime<Utc>>, BTreeSet<i32>)> {
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    let mut changes = Vec::new();
    let mut owned = BTreeSet::new();
    for line in text.lines() {
        let assigned = line.contains("partitions assigned");
        if !assigned && !line.contains("partitions revoked") {
            continue;
        }
        let Some(list) = line
            .split("partitions=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        for p in list.split(',').filter_map(|p| p.trim().parse::<i32>().ok()) {
            if assigned {
                owned.insert(p);
            } else {
                owned.remove(&p);
            }
        }
        let at = line
            .split_whitespace()
            .next()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        changes.push((at, owned.clone()));
    }
    changes
}

/// How long after `since` the log first shows its worker owning `partitions` partitions.
pub fn owned_all_after(log: &Path, since: DateTime<Utc>, partitions: usize) -> Option<Duration> {
    ownership(log).into_iter().find_map(|(at, owned)| match at {
        Some(at) if at >= since && owned.len() == partitions => (at - since).to_std().ok(),
        _ => None,
    })
}

/// The log without its colour escapes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Per input partition, one past the last record's offset (read back, exact on tansu too).
fn input_ends(names: &Names, count: usize) -> BTreeMap<i32, i64> {
    let input = tools::read_topic_as(
        brokers(),
        &names.input,
        count,
        Duration::from_secs(60),
        Isolation::ReadUncommitted,
    )
    .expect("read the input back");
    assert_eq!(input.len(), count, "every input record read back");
    let mut ends = BTreeMap::new();
    for r in &input {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (*end).max(r.offset + 1);
    }
    ends
}

fn committed_everything(committed: &[(i32, i64)], ends: &BTreeMap<i32, i64>) -> bool {
    ends.iter().all(|(p, end)| {
        committed
            .iter()
            .any(|(cp, offset)| cp == p && offset >= end)
    })
}

/// `init_transactions` with a dead instance's transactional id: what a restarted instance does
/// first, and what an operator does for an instance that will not come back. Aborts whatever
/// that instance left open.
/// Through the operator's command, `promo-attribution topics fence`.
pub fn fence(transactional_id: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
        .args(["topics", "fence", "--brokers", brokers()])
        .args(["--transactional-id", transactional_id])
        .output()
        .expect("run promo-attribution topics fence");
    assert!(
        out.status.success(),
        "topics fence {transactional_id} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `survivor` has written a conversion for every id (read_uncommitted: the broker
/// holds its commits back while the dead member's transaction is open) and its count of
/// committed transactions has stood still for a second.
fn wait_until_quiet(survivor: &ChildWorker, conversions: &str, ids: &BTreeSet<String>) {
    let decided = super::read_until_keys(
        conversions,
        Isolation::ReadUncommitted,
        "order_id",
        ids,
        Instant::now() + Duration::from_secs(90),
    );
    let seen = group_by(decided.records(), "order_id").len();
    assert_eq!(seen, ids.len(), "the survivor decided every order");
    let address = super::admin::admin_address(survivor);
    let mut last = (f64::NAN, Instant::now());
    let quiet = wait_until(Duration::from_secs(60), || {
        let committed = super::metric(
            &super::admin::scrape(&address),
            "promo_transactions_total{outcome=\"committed\"}",
        )
        .unwrap_or(0.0);
        if committed != last.0 {
            last = (committed, Instant::now());
        }
        last.1.elapsed() >= Duration::from_secs(1)
    });
    assert!(
        quiet,
        "the survivor kept committing for 60 s after the stream ended"
    );
}

/// Two exactly-once workers on a 6-partition input; one is SIGKILLed while orders stream in and
/// never restarted; `fence_dead` then does what an operator would. Waits up to `deadline` after
/// the kill for the survivor to own every partition and for the group to commit every input
/// record, checks that every order got exactly one distinct conversion equal to offline mode,
/// and reports the times.
pub fn kill_one_of_two(test: &str, fence_dead: bool, deadline: Duration) -> Takeover {
    let names = Names::new(test);
    names.create_topics(PARTITIONS);
    // The durable broker writes every batch to its S3 server (a Python process): a third of
    // the stream keeps the test under a minute there.
    let count = if super::durable() { 2000 } else { 6000 };
    let records = orders("V", count, 17);
    let ids = order_ids(&records);
    let expected = offline_reference(&records, &Settings::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    // `a` keeps each transaction open for seconds, so the kill lands inside one that has
    // written outputs; `b` commits as usual.
    let sets_a = [
        "kafka.batch_max_records=1000000",
        "kafka.batch_max_ms=4000",
        "kafka.batch_min_ms=4000",
    ];
    let sets_b = ["kafka.batch_max_records=50"];
    let (tx_a, tx_b) = (
        format!("{}-a", names.transactional_id),
        format!("{}-b", names.transactional_id),
    );
    let (first, rest) = records.split_at(count / 3);
    super::produce(&names.input, first);
    let mut a = ChildWorker::spawn(&names, &tx_a, &sets_a, &log_a);
    let mut b = ChildWorker::spawn(&names, &tx_b, &sets_b, &log_b);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (pa, pb) = (owned_partitions(&log_a), owned_partitions(&log_b));
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS as usize
        }),
        "both workers own partitions; a:\n{}\nb:\n{}",
        a.log_tail(),
        b.log_tail()
    );

    // The rest streams in while `a` is killed, so that it dies with a batch open.
    let killed_at = std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            for chunk in rest.chunks(count / 60) {
                super::produce(&names.input, chunk);
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        // Kill once a quarter of the rest was sent: the workers are busy by then.
        let sent_enough = wait_until(Duration::from_secs(60), || {
            tools::end_offsets(brokers(), &names.input, Isolation::ReadUncommitted)
                .map(|ends| ends.iter().map(|(_, _, high)| *high).sum::<i64>())
                .unwrap_or(0)
                >= (first.len() + rest.len() / 4) as i64
        });
        assert!(sent_enough, "the feeder produced a quarter of the stream");
        assert_eq!(a.exited(), None, "a still running; log:\n{}", a.log_tail());
        a.kill();
        let killed_at = (Instant::now(), Utc::now());
        // Whether the dead member had written outputs in a transaction it never ended: the
        // conversions' last stable offset behind their high watermark.
        let left_open = tools::end_offsets(brokers(), &names.conversions, Isolation::ReadCommitted)
            .ok()
            .zip(tools::end_offsets(brokers(), &names.conversions, Isolation::ReadUncommitted).ok())
            .is_some_and(|(committed, written)| committed != written);
        feeder.join().expect("feeder thread");
        (killed_at, left_open, Instant::now())
    });
    let ((_, killed_wall), left_open, fed_at) = killed_at;
    if fence_dead {
        // An operator fences a group that has stalled, i.e. one whose survivor has decided what
        // it could and stopped committing. A fence that lands in the middle of one of the
        // survivor's commits can instead trip tansu's simultaneous-commit defect
        // (docs/dev-notes/2026-12-05-commit-path-and-tansu.md, 2b), which then holds every
        // later commit back for good, with the dead instance's id left to release it.
        wait_until_quiet(&b, &names.conversions, &ids);
        fence(&tx_a);
    }

    let ends = input_ends(&names, records.len());

    let mut committed = Vec::new();
    let mut committed_after = None;
    wait_until(deadline, || {
        committed = group_offsets(&names.group, &names.input, PARTITIONS).unwrap_or_default();
        if committed_everything(&committed, &ends) {
            committed_after = Some(fed_at.elapsed());
        }
        committed_after.is_some()
    });
    let all_partitions_after = owned_all_after(&log_b, killed_wall, PARTITIONS as usize);
    assert_eq!(
        b.exited(),
        None,
        "survivor still running; log:\n{}",
        b.log_tail()
    );

    // Every order has exactly one distinct conversion, equal to offline mode (repeats of the
    // killed member's open batch are allowed on tansu, byte-identical).
    let outputs = read_outputs(
        &names.conversions,
        "order_id",
        &ids,
        Duration::from_secs(90),
    );
    let mut firsts = Vec::new();
    for (id, copies) in group_by(outputs.records(), "order_id") {
        for copy in &copies[1..] {
            assert_eq!(
                text(copy),
                text(&copies[0]),
                "conversion of {id} written twice with different bytes"
            );
        }
        firsts.push(copies[0].clone());
    }
    assert_same_records(
        &firsts,
        &expected.conversions,
        "distinct conversions vs offline",
    );
    let survivor_log = strip_ansi(&b.log_tail());
    let _ = b.terminate(Duration::from_secs(30));
    Takeover {
        all_partitions_after,
        committed_after,
        left_open,
        committed,
        ends,
        survivor_log,
    }
}
