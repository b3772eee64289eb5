//! Redis for the detector tests: the settings that turn the detectors on against the shared
//! Redis (each test with its own key prefix), a private `redis-server` a test may stop, pause
//! and restart without disturbing the others, and reading the state the detectors left.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ::redis::TypedCommands;

use super::{redis_url, unique_prefix, wait_until};

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
        .query(&mut connect(url))
        .unwrap_or_else(|e| panic!("ZCARD {key}: {e}"))
}

/// A `redis-server` of the test's own, on a free port, without persistence.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// A free port with nothing listening on it yet.
    pub fn reserve() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        PrivateRedis { port, child: None }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it answers PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "private redis already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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
