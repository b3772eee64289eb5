//! Settings of the Redis code store: where it is, and how the worker keeps its copy fresh.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::RedisUrl;

/// How `store.redis_url` is read: one node, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Single,
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. Carries the password, so
    /// set it from a secret (`PROMO__STORE__REDIS_URL`).
    pub redis_url: RedisUrl,
    /// Prefix of every key; the part in braces is the Redis Cluster hash tag of the code store,
    /// so one atomic publish touches one slot.
    pub key_prefix: String,
    /// How often the worker reads the current-version pointer even without a notification
    /// (notifications are lost while a subscriber reconnects).
    pub poll_interval_ms: u64,
    /// With a table older than this (no confirmed check against Redis), the worker stops
    /// attributing and retries, rather than crediting from an arbitrarily old table. 0 = never.
    pub max_staleness_secs: u64,
    /// Without a table in Redis at start, wait (not ready) instead of running with an empty one.
    pub require_table_at_start: bool,
    /// Versions whose content is kept for `codes rollback`; older ones are removed.
    pub keep_versions: u32,
    /// A replaced version stays readable this long, so a worker that read the pointer just
    /// before a publish can still load it.
    pub grace_secs: u64,
    pub connect_timeout_ms: u64,
    pub io_timeout_ms: u64,
    /// `single` (one node, `redis_url`) or `cluster`: `redis_url` lists seed nodes separated by
    /// commas (`rediss://user:pw@h1:6379,h2:6379`; an entry without a scheme takes scheme,
    /// credentials and TLS from the first), and every node is found from the cluster's slot map.
    pub redis_mode: RedisMode,
    /// PEM file of the CA (or bundle) that signed the Redis server certificates; without it the
    /// system's trust store is used.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) and its PKCS#8 key (PEM) for Redis servers that require mutual
    /// TLS (`tls-auth-clients yes`). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate and host name. For a test bench only: anyone on the path
    /// can read and change the codes and the detectors' state. Logged as a warning at every start.
    pub tls_insecure: bool,
    /// Replicas that must hold a batch's detector state before the batch commits (`WAIT`), so a
    /// primary lost right after a commit cannot take counts with it (Redis replicates
    /// asynchronously). 0 = do not wait (a single node without replicas); 1 on a cluster with
    /// one replica per primary. Fewer acknowledgements within half of `io_timeout_ms` fail the
    /// step, and the batch is redone.
    pub wait_replicas: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "promo:".into(),
            poll_interval_ms: 1000,
            max_staleness_secs: 300,
            require_table_at_start: true,
            keep_versions: 20,
            grace_secs: 600,
            connect_timeout_ms: 2000,
            io_timeout_ms: 10_000,
            redis_mode: RedisMode::Single,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_insecure: false,
            wait_replicas: 0,
        }
    }
}

impl StoreSettings {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        let url = self.redis_url.expose();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            problems.push(format!(
                "store.redis_url must start with redis://, rediss:// or unix://, got {:?}",
                self.redis_url.redacted()
            ));
        }
        self.check_connection(problems);
        if self.key_prefix.is_empty() {
            problems.push("store.key_prefix must not be empty".into());
        }
        if self.poll_interval_ms < 10 {
            problems.push("store.poll_interval_ms must be at least 10".into());
        }
        if self.keep_versions == 0 {
            problems.push("store.keep_versions must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 || self.io_timeout_ms == 0 {
            problems.push("store.connect_timeout_ms and store.io_timeout_ms must be > 0".into());
        }
        if self.max_staleness_secs != 0
            && self.max_staleness_secs.saturating_mul(1000) <= self.poll_interval_ms
        {
            problems.push(
                "store.max_staleness_secs must be longer than store.poll_interval_ms (or 0)".into(),
            );
        }
    }
}

impl StoreSettings {
    /// The Redis mode, seed list and TLS settings hang together.
    fn check_connection(&self, problems: &mut Vec<String>) {
        let url = self.redis_url.expose();
        let several = url.contains(',');
        if several && self.redis_mode == RedisMode::Single {
            problems.push(
                "store.redis_url lists several nodes; set store.redis_mode = \"cluster\" to use them as cluster seeds".into(),
            );
        }
        if self.redis_mode == RedisMode::Cluster && url.contains("unix://") {
            problems
                .push("store.redis_mode = \"cluster\" needs TCP nodes, not a unix socket".into());
        }
        // The redis client reads `#insecure` as "accept any certificate", with no trace in the
        // logs; a setting one can see and grep for replaces it.
        if url.contains("#insecure") {
            problems.push(
                "store.redis_url ends in #insecure, which silently turned certificate checks off; remove it and set store.tls_insecure = true if that is really meant".into(),
            );
        }
        let tls = url.starts_with("rediss://");
        let files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if !tls && (self.tls_insecure || files.iter().any(|f| f.is_some())) {
            problems.push(
                "store.tls_ca_file, tls_cert_file, tls_key_file and tls_insecure need a rediss:// store.redis_url".into(),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push("store.tls_cert_file and store.tls_key_file go together".into());
        }
        // The TLS library skips the client certificate when it accepts any server.
        if self.tls_insecure && self.tls_cert_file.is_some() {
            problems.push(
                "store.tls_insecure cannot be combined with a client certificate (it would not be sent)".into(),
            );
        }
    }
}
