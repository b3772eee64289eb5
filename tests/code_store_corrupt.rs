//! Corrupt versions in the code store (issue 12, item 4): whatever a version's keys hold, the
//! loader refuses it with a reason — never a panic, never mistaken for a Redis outage — the
//! follower counts it as refused and keeps the table in force, then follows the next good
//! version; the `codes` command reports it as an error.
//!
//! A version over the matcher budget (issue 13, item 1) takes the same path: `codes import`
//! refuses it naming the rows, and a worker that finds one published refuses it without
//! building it whole, so its memory stays bounded and the previous table keeps deciding.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use promo_attribution::admin::Health;
use promo_attribution::codes::load::{read_codes, read_partners};
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::metrics::Metrics;
use promo_attribution::redis::code_sync;
use promo_attribution::redis::store::{Keys, Snapshot, Store, StoreError, VersionMeta};
use promo_attribution::settings::StoreSettings;
use support::store::{codes, current_version, import_samples, redis_connection as connection};
use support::{metric, redis_url, text, unique_prefix, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

fn store_settings(url: &str, prefix: &str) -> StoreSettings {
    StoreSettings {
        poll_interval_ms: 100,
        ..support::store::store_settings(url, prefix)
    }
}

/// Writes version `to` as a copy of version 1 (its meta renumbered), with `published_ms`
/// replaced by `published_ms`, makes it current and announces it: a publish whose content a
/// bad restore or a hand edit damaged.
fn publish_copy(url: &str, prefix: &str, to: u64, published_ms: &str) {
    let keys = Keys::new(prefix);
    let mut c = connection(url);
    let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(keys.version(1))
        .query(&mut c)
        .expect("read version 1");
    let mut pipe = redis::pipe();
    for (field, value) in fields {
        let value = match field.as_str() {
            "meta" => {
                let mut meta: serde_json::Value =
                    serde_json::from_slice(&value).expect("meta is JSON");
                meta["version"] = serde_json::json!(to);
                meta["base"] = serde_json::json!(to - 1);
                meta.to_string().into_bytes()
            }
            "published_ms" => published_ms.as_bytes().to_vec(),
            _ => value,
        };
        pipe.hset(keys.version(to), field, value).ignore();
    }
    pipe.set(keys.current(), to)
        .ignore()
        .publish(keys.channel(), to)
        .ignore();
    pipe.query::<()>(&mut c).expect("write the version");
}

fn load_current(url: &str, prefix: &str) -> Result<Option<u64>, StoreError> {
    Store::connect(&store_settings(url, prefix))
        .expect("connect")
        .load_current()
        .map(|v| v.map(|v| v.meta.version))
}

#[test]
fn a_published_time_that_is_not_a_number_is_refused_not_an_outage() {
    let url = redis_url();
    let prefix = unique_prefix("corrupt-published");
    import_samples(url, &prefix);
    publish_copy(url, &prefix, 2, "soon");
    let loaded = load_current(url, &prefix);
    assert!(
        matches!(&loaded, Err(StoreError::Corrupt { version: 2, reason }) if reason.contains("published_ms")),
        "refused as corrupt (it was a Redis error, retried as an outage forever): {loaded:?}"
    );
    let export = codes(url, &prefix, &["export"]);
    assert_eq!(export.status.code(), Some(2), "{}", text(&export.stderr));
    assert!(
        text(&export.stderr).contains("version 2 is unreadable"),
        "{}",
        text(&export.stderr)
    );
}

#[test]
fn a_version_key_of_the_wrong_type_is_refused() {
    let url = redis_url();
    let prefix = unique_prefix("corrupt-type");
    import_samples(url, &prefix);
    let keys = Keys::new(&prefix);
    let mut c = connection(url);
    let () = redis::pipe()
        .del(keys.version(1))
        .ignore()
        .set(keys.version(1), "not a hash")
        .ignore()
        .query(&mut c)
        .expect("overwrite version 1");
    let loaded = load_current(url, &prefix);
    assert!(
        matches!(&loaded, Err(StoreError::Corrupt { version: 1, reason }) if reason.contains("WRONGTYPE")),
        "refused as corrupt: {loaded:?}"
    );
}

#[test]
fn a_meta_naming_another_version_is_refused() {
    let url = redis_url();
    let prefix = unique_prefix("corrupt-number");
    import_samples(url, &prefix);
    let keys = Keys::new(&prefix);
    let mut c = connection(url);
    let meta: String = redis::cmd("HGET")
        .arg(keys.version(1))
        .arg("meta")
        .query(&mut c)
        .expect("meta");
    let mut meta: serde_json::Value = serde_json::from_str(&meta).expect("json");
    meta["version"] = serde_json::json!(99);
    let () = redis::cmd("HSET")
        .arg(keys.version(1))
        .arg("meta")
        .arg(meta.to_string())
        .query(&mut c)
        .expect("write meta");
    let loaded = load_current(url, &prefix);
    assert!(
        matches!(&loaded, Err(StoreError::Corrupt { version: 1, .. })),
        "refused (the CLI would have built the next change on version 99): {loaded:?}"
    );
}

/// A follower on version 1; then a version it must refuse and one it must take.
#[test]
fn the_follower_refuses_counts_keeps_and_then_follows_the_next_good_version() {
    let url = redis_url();
    let prefix = unique_prefix("corrupt-follow");
    import_samples(url, &prefix);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let health = Arc::new(Health::new());
    let shutdown = Arc::new(AtomicBool::new(false));
    let (table, thread) = code_sync::start(
        &store_settings(url, &prefix),
        Default::default(),
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .expect("start on version 1");
    let number = || VersionMeta::version_number(table.current().version());
    assert_eq!(number(), Some(1));
    let refused = || {
        metric(
            &metrics.render().expect("render"),
            r#"promo_code_table_reloads_total{outcome="refused"}"#,
        )
    };

    publish_copy(url, &prefix, 2, "soon");
    assert!(
        wait_until(DEADLINE, || refused() == Some(1.0)),
        "version 2 counted as refused: {:?}",
        refused()
    );
    assert_eq!(number(), Some(1), "the previous table stays");
    let text = metrics.render().expect("render");
    assert_eq!(metric(&text, "promo_redis_up"), Some(1.0), "not an outage");

    // Published at the smallest time an i64 holds: the publish lag must not overflow.
    publish_copy(url, &prefix, 3, &i64::MIN.to_string());
    assert!(
        wait_until(DEADLINE, || number() == Some(3)),
        "the next good version is followed (code-sync alive: {})",
        !thread.is_finished()
    );
    assert!(!thread.is_finished(), "the code-sync thread lives on");
    assert_eq!(health.is_alive(), Ok(()));

    shutdown.store(true, Ordering::SeqCst);
    assert!(thread.join().is_ok(), "code-sync ends cleanly on shutdown");
}

/// The table of the issue: 1,000 regex rows of seven bytes whose Unicode `\w` classes compile
/// to ~420 KiB each (~420 MiB in all).
fn unicode_class_table() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hostile.csv");
    let mut csv = String::from("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n");
    for i in 0..1000 {
        csv.push_str(&format!("\\w{{5}}Q{i},1001,2001,TRACKING,ALWAYS,RE\n"));
    }
    std::fs::write(&path, csv).expect("write the table");
    (dir, path)
}

#[test]
fn import_refuses_a_table_over_the_matcher_budget_naming_its_rows() {
    let url = redis_url();
    let prefix = unique_prefix("budget-import");
    let (_dir, path) = unicode_class_table();
    let out = codes(url, &prefix, &["import", &path.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("over the matcher budget of 256 MiB (codes.max_regex_bytes)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"column "Promo Code": regex "\\w{5}Q"#)
            && stderr.contains("(Unicode classes)"),
        "the rows are named: {stderr}"
    );
    assert_eq!(current_version(url, &prefix), None, "nothing published");
}

fn process_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a memory field")
}

/// Published behind the CLI's back (an older CLI, or one with a larger budget than the
/// workers'): the follower refuses it, counted, keeps deciding with version 1, and never holds
/// much more than its budget while finding out.
#[test]
fn a_worker_refuses_a_version_over_its_matcher_budget_and_keeps_the_previous_table() {
    let url = redis_url();
    let prefix = unique_prefix("budget-follow");
    import_samples(url, &prefix);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let shutdown = Arc::new(AtomicBool::new(false));
    let budget = 32 * 1024 * 1024;
    let options = BuildOptions {
        max_regex_bytes: budget,
        ..BuildOptions::default()
    };
    let (table, thread) = code_sync::start(
        &store_settings(url, &prefix),
        options,
        metrics.clone(),
        Arc::new(Health::new()),
        shutdown.clone(),
    )
    .expect("start on version 1");

    let (_dir, path) = unicode_class_table();
    let entries = read_codes(
        std::fs::read(&path).expect("read").as_slice(),
        "hostile.csv",
    )
    .expect("rows are valid one by one");
    let partners = read_partners(
        std::fs::read(support::partners_csv())
            .expect("partners")
            .as_slice(),
        "partners.csv",
    )
    .expect("partners");
    let before_kib = process_kib("VmRSS:");
    let mut store = Store::connect(&store_settings(url, &prefix)).expect("connect");
    let snapshot = Snapshot {
        entries,
        partners,
        programs: Default::default(),
    };
    store
        .publish(&snapshot, Some(1), VersionMeta::default())
        .expect("publish version 2");

    let refused = || {
        metric(
            &metrics.render().expect("render"),
            r#"promo_code_table_reloads_total{outcome="refused"}"#,
        )
    };
    assert!(
        wait_until(Duration::from_secs(120), || refused() == Some(1.0)),
        "version 2 counted as refused: {:?}",
        refused()
    );
    let current = table.current();
    assert_eq!(VersionMeta::version_number(current.version()), Some(1));
    let program = current.program("1001").expect("program 1001");
    let decided = current.lookup(program, "anna10", &mut Vec::new());
    assert_eq!(
        decided.map(|m| current.code_id(m.entry).to_string()),
        Some("LI:ANNA10".to_string()),
        "the previous table keeps deciding"
    );
    // Built whole, the table takes ~420 MiB; refused within the budget, far less.
    let peak_growth = process_kib("VmHWM:").saturating_sub(before_kib) / 1024;
    let kept_growth = process_kib("VmRSS:").saturating_sub(before_kib) / 1024;
    assert!(
        peak_growth < 3 * budget as u64 / (1024 * 1024),
        "peak RSS grew {peak_growth} MiB"
    );
    assert!(
        kept_growth < 48,
        "RSS after the refusal grew {kept_growth} MiB"
    );

    shutdown.store(true, Ordering::SeqCst);
    assert!(thread.join().is_ok(), "code-sync ends cleanly on shutdown");
}
