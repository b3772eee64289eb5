//! Settings of the Redis code store: where it is, and how the worker keeps its copy fresh.

use serde::{Deserialize, Serialize};

use super::secret::RedisUrl;

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
