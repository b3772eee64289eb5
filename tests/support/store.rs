//! The code store from the outside: the `codes` admin CLI, a worker pointed at a store, orders
//! on the sample table's terms, and a direct connection for tests that tamper with the keys.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use promo_attribution::kafka::tools;
use promo_attribution::redis::connect::Endpoint;
use promo_attribution::redis::store::Store;
use promo_attribution::settings::{RedisMode, StoreSettings};

use super::{ChildWorker, Names, brokers, codes_csv, is_cluster, partners_csv, text};

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
}

/// `promo-attribution codes --redis-url … --prefix … ARGS`.
pub fn codes(url: &str, prefix: &str, args: &[&str]) -> Output {
    binary()
        .arg("codes")
        .args(["--redis-url", url, "--prefix", prefix])
        .args(args)
        .env_remove("PROMO__STORE__REDIS_URL")
        .env("PROMO__STORE__REDIS_MODE", redis_mode(url))
        .output()
        .expect("run promo-attribution codes")
}

pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "codes failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

pub fn store_settings(url: &str, prefix: &str) -> StoreSettings {
    StoreSettings {
        redis_url: url.into(),
        key_prefix: prefix.to_string(),
        redis_mode: if is_cluster(url) {
            RedisMode::Cluster
        } else {
            RedisMode::Single
        },
        ..StoreSettings::default()
    }
}

/// `store.redis_mode` for `url` (see [`is_cluster`]).
pub fn redis_mode(url: &str) -> &'static str {
    if is_cluster(url) { "cluster" } else { "single" }
}

pub fn current_version(url: &str, prefix: &str) -> Option<u64> {
    Store::connect(&store_settings(url, prefix))
        .expect("connect to the test Redis")
        .current_version()
        .expect("read the current version")
}

pub fn import_samples(url: &str, prefix: &str) {
    let codes_path = codes_csv().display().to_string();
    let partners_path = partners_csv().display().to_string();
    let out = ok(&codes(
        url,
        prefix,
        &["import", &codes_path, "--partners", &partners_path],
    ));
    assert!(out.contains("published version 1"), "{out}");
}

/// An order for program 1001 with one code, on the sample table's terms.
pub fn order(order_id: &str, code: &str) -> Vec<u8> {
    format!(
        r#"{{"order_id":"{order_id}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["{code}"],"touchpoints":[{{"partner_id":"2001","click_id":"c-{order_id}","ts":"2026-05-09T08:00:00Z"}}]}}"#
    )
    .into_bytes()
}

pub fn produce(names: &Names, records: &[Vec<u8>]) {
    tools::produce_records(brokers(), &names.input, records).expect("produce orders");
}

/// The worker settings that point it at the store under `prefix`.
pub fn store_sets(url: &str, prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut sets = vec![
        "codes.source=redis".to_string(),
        format!("store.redis_url={url}"),
        format!("store.key_prefix={prefix}"),
        format!("store.redis_mode={}", redis_mode(url)),
        "store.poll_interval_ms=200".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets
}

pub fn spawn_worker(names: &Names, sets: &[String], log: &Path) -> ChildWorker {
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    ChildWorker::spawn(names, &names.transactional_id, &sets, log)
}

pub fn redis_connection(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .expect("redis url")
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to redis")
}

/// A connection to the node that holds `key` (the one node, or its slot's primary).
pub fn key_connection(url: &str, key: &str) -> ::redis::Connection {
    Endpoint::new(&store_settings(url, "p:"))
        .and_then(|endpoint| endpoint.connect_for(key))
        .unwrap_or_else(|e| panic!("connect to the node of {key} at {url}: {e}"))
}
