//! Redis for the detector tests: the settings that turn the detectors on against the shared
//! Redis (each test with its own key prefix), a private `redis-server` a test may stop, pause
//! and restart without disturbing the others, reading the state the detectors left, and
//! comparing what the worker wrote with the offline run.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::redis::TypedCommands;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::kafka::tools;
use promo_attribution::offline;
use promo_attribution::settings::Settings;
use serde_json::Value;

use super::{
    ChildWorker, Names, assert_same_records, brokers, field, order_ids, orders, payloads, read,
    redis_url, unique_prefix, wait_until,
};

/// A key long enough for `detectors.customer_hmac_key`.
pub const TEST_HMAC_KEY: &str = "detector-test-key-0123456789";

/// `--set` overrides that turn the detectors on against `url` under `prefix`, with short Redis
/// timeouts so an outage is noticed quickly, and state that expires within hours rather than
/// the production months (the shared Redis outlives every test run).
pub fn detector_sets(url: &str, prefix: &str) -> Vec<String> {
    vec![
        "detectors.enabled=true".into(),
        format!("detectors.customer_hmac_key={TEST_HMAC_KEY}"),
        "detectors.replay_ttl_secs=3600".into(),
        "detectors.limit_ttl_secs=3600".into(),
        "detectors.grace_secs=3600".into(),
        format!("store.redis_url={url}"),
        format!("store.key_prefix={prefix}"),
        format!("store.redis_mode={}", super::store::redis_mode(url)),
        "store.connect_timeout_ms=500".into(),
        "store.io_timeout_ms=1000".into(),
    ]
}

/// The shared Redis of `scripts/services`, and a key prefix no other test uses.
pub fn shared(test: &str) -> (String, String) {
    (redis_url().to_string(), unique_prefix(test))
}

/// A connection to `url` (the test fails if Redis does not answer).
pub fn connect(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Removes every key below `prefix` (a test's own, from [`shared`]).
pub fn delete_prefix(url: &str, prefix: &str) {
    let mut connection = connect(url);
    let keys: Vec<String> = connection
        .scan_match::<_, String>(format!("{prefix}*"))
        .map(|keys| keys.filter_map(Result::ok).collect())
        .unwrap_or_else(|e| panic!("SCAN {prefix}*: {e}"));
    for chunk in keys.chunks(1000) {
        ::redis::cmd("UNLINK")
            .arg(chunk)
            .query::<u64>(&mut connection)
            .unwrap_or_else(|e| panic!("UNLINK: {e}"));
    }
}

/// Members of a sorted set the detectors keep.
pub fn zcard(url: &str, key: &str) -> u64 {
    ::redis::cmd("ZCARD")
        .arg(key)
        .query(&mut super::store::key_connection(url, key))
        .unwrap_or_else(|e| panic!("ZCARD {key}: {e}"))
}

/// A `redis-server` of the test's own, on a free port, without persistence.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    /// With a directory, every write is appended to a file there and fsynced before Redis
    /// answers, so the server can be killed and restarted without losing state.
    persist_in: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// A free port with nothing listening on it yet.
    pub fn reserve() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        PrivateRedis {
            port,
            child: None,
            persist_in: None,
        }
    }

    /// The same, keeping its data in `dir` across kills (append-only file, fsync always).
    pub fn persistent(dir: &std::path::Path) -> PrivateRedis {
        let mut redis = PrivateRedis::reserve();
        redis.persist_in = Some(dir.to_path_buf());
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it answers PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "private redis already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.persist_in {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by scripts/services)");
        self.child = Some(child);
        let url = self.url();
        let up = wait_until(Duration::from_secs(10), || {
            ::redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        assert!(up, "private redis on port {} did not answer", self.port);
    }

    /// Kills the server (its state is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the server keeps its state but stops answering, like a hung or
    /// partitioned Redis.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("private redis running");
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios run on one node and on the cluster

/// A worker with the detectors on (state in the Redis at `url`) killed mid-stream and started
/// again: the replay records make the redone batches repeat no state change, so conversions
/// and alerts are the offline run's and every VIPONCE use is counted once.
pub fn killed_worker_counts_each_use_once(url: &str, test: &str) {
    let t0 = Instant::now();
    let names = Names::new(test);
    names.create_topics(1);
    let records = orders("DK", 1500, 11);
    let ids = order_ids(&records);
    let prefix = unique_prefix(test);
    let mut sets = detector_sets(url, &prefix);
    sets.push("kafka.batch_max_records=50".into());
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let settings = names.settings(&names.transactional_id, &sets);
    let (expected_conversions, expected_alerts) = offline_run(&records, &settings);
    assert!(
        expected_alerts
            .iter()
            .any(|a| field(a, "kind") == "SINGLE_USE_CODE_REUSED"),
        "the corpus exercises the detectors"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    // The last third goes in only after the kill, so the kill always lands before the work is
    // done, however fast the first worker is.
    let (before_kill, after_kill) = records.split_at(records.len() * 2 / 3);
    produce(&names.input, before_kill);

    let mut first = ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let early = read(&names.conversions, 1, Duration::from_secs(90));
    assert!(
        !early.is_empty(),
        "first conversions; log:\n{}",
        first.log_tail()
    );
    first.kill();
    let at_kill = read(&names.conversions, records.len(), Duration::from_secs(2)).len();
    produce(&names.input, after_kill);

    let mut second = ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);
    let (all, alerts) = outputs_after(
        &names,
        &ids,
        &expected_alerts,
        Duration::from_secs(90),
        || {
            let status = second.terminate(Duration::from_secs(30));
            assert_eq!(
                status.and_then(|s| s.code()),
                Some(0),
                "drains; log:\n{}",
                second.log_tail()
            );
        },
    );

    // The replay records gave the redone batch the same counts, hence the same bytes.
    assert_offline_and_counted_once(
        url,
        &prefix,
        &records,
        (&all, &alerts),
        (&expected_conversions, &expected_alerts),
    );
    eprintln!(
        "killed: {} orders, {at_kill} converted at the kill, {} conversion and {} alert records, {:?}",
        records.len(),
        all.len(),
        alerts.len(),
        t0.elapsed()
    );
}

/// The outputs are the offline run's (exact copies of a redone batch allowed), and each
/// VIPONCE use of `records` is counted once in the state under `prefix`, however often its
/// batch was redone.
pub fn assert_offline_and_counted_once(
    url: &str,
    prefix: &str,
    records: &[Vec<u8>],
    (conversions, alerts): (&[Vec<u8>], &[Vec<u8>]),
    (expected_conversions, expected_alerts): (&[Vec<u8>], &[Vec<u8>]),
) {
    assert_same_distinct(conversions, expected_conversions, "distinct conversions");
    assert_same_distinct(alerts, expected_alerts, "distinct alerts");
    let (key, vip_orders) = vip_uses(prefix, records);
    assert_eq!(
        zcard(url, &key),
        vip_orders,
        "VIPONCE uses counted once each"
    );
}

// ---------------------------------------------------------------------------------------------
// Outputs

/// Produces `records` to `topic`, every one of them.
pub fn produce(topic: &str, records: &[Vec<u8>]) {
    let produced = tools::produce_records(brokers(), topic, records).expect("produce");
    assert_eq!(produced, records.len(), "every record produced");
}

/// The offline engine over `records` with `settings` (its code files): conversions, alerts.
pub fn offline_run(records: &[Vec<u8>], settings: &Settings) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let table = offline::load_table(
        settings.codes.codes_file.as_deref().expect("a codes file"),
        settings.codes.partners_file.as_deref(),
        BuildOptions::default(),
    )
    .expect("test table loads");
    offline_with(records, &table, settings)
}

/// The offline engine over `records` with `table`: conversions, alerts, one record each.
pub fn offline_with(
    records: &[Vec<u8>],
    table: &promo_attribution::codes::CodeTable,
    settings: &Settings,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let run = offline::attribute_captured(&records.join(&b'\n'), "test", table, settings)
        .expect("offline run");
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    (lines(&run.conversions), lines(&run.alerts))
}

/// The same records, each counted once: tansu shows an aborted batch's records to readers, so
/// a redone batch may leave exact copies, which are allowed; anything else is not.
pub fn assert_same_distinct(actual: &[Vec<u8>], expected: &[Vec<u8>], what: &str) {
    let distinct = |records: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let set: BTreeSet<Vec<u8>> = records.iter().cloned().collect();
        set.into_iter().collect()
    };
    assert_same_records(&distinct(actual), &distinct(expected), what);
}

/// The distinct alert ids of some alerts.
pub fn alert_ids(alerts: &[Vec<u8>]) -> BTreeSet<String> {
    alerts.iter().map(|a| field(a, "alert_id")).collect()
}

/// The usage set of the sample table's single-use code VIPONCE, and how many of `records` use
/// it (each must be counted exactly once, however often it was replayed).
pub fn vip_uses(prefix: &str, records: &[Vec<u8>]) -> (String, u64) {
    let uses = records
        .iter()
        .filter(|r| {
            let v: Value = serde_json::from_slice(r).expect("json");
            v["program_id"] == "1001"
                && v["promo_codes"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "VIPONCE"))
        })
        .count() as u64;
    (format!("{prefix}d:{{1001}}:u:LI:VIPONCE"), uses)
}

/// Waits for a conversion of every order in `orders` and for every alert id of
/// `expected_alerts`, stops the worker(s) with `stop`, then reads both topics to the end.
pub fn outputs_after(
    names: &Names,
    orders: &BTreeSet<String>,
    expected_alerts: &[Vec<u8>],
    deadline: Duration,
    stop: impl FnOnce(),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    // Through `read_outputs`: with two workers, tansu can hold committed outputs back from
    // read_committed readers (see there).
    let conversions = super::read_outputs(&names.conversions, "order_id", orders, deadline);
    let alerts = super::read_outputs(
        &names.alerts,
        "alert_id",
        &alert_ids(expected_alerts),
        deadline,
    );
    stop();
    (
        payloads(&conversions.settled()),
        payloads(&alerts.settled()),
    )
}

/// Orders of the test generator with the customer, device and IP fields the detectors read: a
/// few thousand customers, so per-customer and per-actor sets hold realistic sizes. The detector
/// benches drain these.
pub fn detector_orders(count: usize) -> Vec<Vec<u8>> {
    let mut rng = super::Rng::new(0x00de_7ec7);
    super::orders("BENCH", count, 5)
        .into_iter()
        .map(|record| {
            let mut order: Value = serde_json::from_slice(&record).expect("json");
            let customer = rng.below(5_000);
            order["customer"] = serde_json::json!({"id": format!("cust-{customer}"), "email_sha256": format!("{:064x}", customer * 7919)});
            order["risk"] = serde_json::json!({"device_hash": format!("dev-{}", rng.below(4_000)), "ip_hash": format!("ip-{}", rng.below(3_000))});
            serde_json::to_vec(&order).expect("json")
        })
        .collect()
}
