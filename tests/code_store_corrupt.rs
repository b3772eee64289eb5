//! Corrupt versions in the code store (issue 12, item 4): whatever a version's keys hold, the
//! loader refuses it with a reason — never a panic, never mistaken for a Redis outage — the
//! follower counts it as refused and keeps the table in force, then follows the next good
//! version; the `codes` command reports it as an error.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use promo_attribution::admin::Health;
use promo_attribution::metrics::Metrics;
use promo_attribution::redis::code_sync;
use promo_attribution::redis::store::{Keys, Store, StoreError, VersionMeta};
use promo_attribution::settings::StoreSettings;
use support::store::{codes, import_samples, redis_connection as connection};
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
