//! Settings of the stream worker: Kafka, where the code table comes from, the admin port,
//! logging and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How outputs and input offsets are tied together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Kafka transactions: a batch's outputs and its input offsets commit together.
    #[default]
    ExactlyOnce,
    /// Idempotent producer; input offsets are stored only after every output was acknowledged, so
    /// a crash repeats (byte-identical) outputs but never loses one.
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub conversions_topic: String,
    pub alerts_topic: String,
    pub dlq_topic: String,
    pub delivery: Delivery,
    /// Must be stable for one worker instance across restarts (so a restarted instance fences its
    /// predecessor) and unique among the instances of a group. Kubernetes: the pod name of a
    /// StatefulSet. Empty = `<group_id>-<hostname>`.
    pub transactional_id: String,
    /// Static group membership (`group.instance.id`, KIP-345): a member that restarts within
    /// the session timeout gets its partitions back without a rebalance. The price: a member
    /// that stops — killed, or on SIGTERM, since a static member does not leave the group —
    /// keeps its partitions until its session times out. Off by default because the local
    /// broker (tansu) mishandles static members (partitions are revoked and never handed
    /// over); the Kubernetes StatefulSet turns it on for real Kafka.
    pub static_membership: bool,
    /// `group.instance.id` with `static_membership`; stable per instance and unique in the
    /// group, like the transactional id. Empty = the effective transactional id (the pod name
    /// in a StatefulSet).
    pub group_instance_id: String,
    pub batch_max_records: usize,
    pub batch_max_ms: u64,
    /// A batch is committed as soon as the consumer has nothing more ready, but not before it is
    /// this old, so that under load commits stay amortised over many records.
    pub batch_min_ms: u64,
    /// `transaction.timeout.ms` of the producer: how long the transaction coordinator waits for
    /// an open transaction before aborting it itself. It bounds how long an instance that died
    /// for good (never restarted with its id) holds back `read_committed` readers and the
    /// committed offsets of its partitions. A transaction lasts one batch (at most
    /// `batch_max_ms`, plus a detector step bounded by `store.io_timeout_ms`, plus the commit),
    /// far below this; librdkafka also caps each output's delivery time at it.
    pub transaction_timeout_ms: u64,
    /// Shadow mode (`run --shadow`): decide into `<topic><shadow_suffix>` outputs as group
    /// `<group_id><shadow_suffix>`, without the stateful detectors (see `settings::shadow`).
    pub shadow: bool,
    pub shadow_suffix: String,
    /// librdkafka properties for both clients (security.protocol, sasl.*, ssl.*, ...).
    pub common: super::Properties,
    /// librdkafka properties for the consumer only; they override ours.
    pub consumer: super::Properties,
    /// librdkafka properties for the producer only; they override ours.
    pub producer: super::Properties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "promo-attribution".into(),
            input_topic: "orders".into(),
            conversions_topic: "promo.conversions".into(),
            alerts_topic: "promo.alerts".into(),
            dlq_topic: "promo.dlq".into(),
            delivery: Delivery::ExactlyOnce,
            transactional_id: String::new(),
            static_membership: false,
            group_instance_id: String::new(),
            batch_max_records: 2000,
            batch_max_ms: 100,
            batch_min_ms: 10,
            // 15 s: on Kafka a dead instance's open transaction holds back its partitions' last
            // stable offset until the coordinator aborts it after this long (a pod lost for
            // good, see docs/operations.md); Kafka Streams uses 10 s for the same reason.
            // librdkafka lowers its message and socket timeouts to fit under it.
            transaction_timeout_ms: 15_000,
            shadow: false,
            shadow_suffix: ".shadow".into(),
            common: super::Properties::default(),
            consumer: super::Properties::default(),
            producer: super::Properties::default(),
        }
    }
}

impl KafkaSettings {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        for (name, value) in [
            ("kafka.brokers", &self.brokers),
            ("kafka.group_id", &self.group_id),
            ("kafka.input_topic", &self.input_topic),
            ("kafka.conversions_topic", &self.conversions_topic),
            ("kafka.alerts_topic", &self.alerts_topic),
            ("kafka.dlq_topic", &self.dlq_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} must not be empty"));
            }
        }
        let outputs = [&self.conversions_topic, &self.alerts_topic, &self.dlq_topic];
        if outputs.contains(&&self.input_topic) {
            problems.push("kafka.input_topic must differ from the output topics (the worker would read its own output)".into());
        }
        if self.shadow && self.shadow_suffix.trim().is_empty() {
            problems.push(
                "kafka.shadow_suffix must not be empty in shadow mode (the worker would write to the production topics)".into(),
            );
        }
        if self.batch_max_records == 0 {
            problems.push("kafka.batch_max_records must be greater than 0".into());
        }
        if self.batch_max_ms == 0 {
            problems.push("kafka.batch_max_ms must be greater than 0".into());
        }
        if self.batch_min_ms > self.batch_max_ms {
            problems.push(format!(
                "kafka.batch_min_ms ({}) must not exceed kafka.batch_max_ms ({})",
                self.batch_min_ms, self.batch_max_ms
            ));
        }
        if self.transaction_timeout_ms < 1000 {
            problems.push("kafka.transaction_timeout_ms must be at least 1000".into());
        }
        if self.static_membership && self.group_instance_id.trim() != self.group_instance_id {
            problems.push("kafka.group_instance_id must not start or end with spaces".into());
        }
        for (section, map) in [
            ("common", &self.common),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ] {
            for key in map.keys() {
                if RESERVED_PROPERTIES.contains(&key.as_str()) {
                    problems.push(format!(
                        "kafka.{section}.\"{key}\" is set by the worker from its own settings and cannot be overridden"
                    ));
                }
            }
        }
    }

    /// The `group.instance.id` to use: none without static membership, else the configured
    /// one, else the effective transactional id.
    pub fn effective_group_instance_id(&self) -> Option<String> {
        if !self.static_membership {
            return None;
        }
        if !self.group_instance_id.trim().is_empty() {
            return Some(self.group_instance_id.clone());
        }
        Some(self.effective_transactional_id())
    }

    /// The transactional id to use: the configured one, else `<group>-<hostname>`.
    pub fn effective_transactional_id(&self) -> String {
        if !self.transactional_id.trim().is_empty() {
            return self.transactional_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "local".into());
        format!("{}-{host}", self.group_id)
    }
}

/// Properties whose values carry the delivery guarantees; letting a passthrough map change them
/// would silently break exactly-once.
pub const RESERVED_PROPERTIES: [&str; 8] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "group.id",
    "bootstrap.servers",
    // kafka.static_membership / kafka.group_instance_id decide it.
    "group.instance.id",
];

/// Where the worker's code table comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// The Redis code store (`[store]`), kept in sync while running.
    #[default]
    Redis,
    /// CSV files, loaded once at start (tests, demos, a table that never changes).
    Files,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodesSettings {
    /// Unset: `files` when `codes_file` is set, else `redis`.
    pub source: Option<CodeSource>,
    pub codes_file: Option<PathBuf>,
    pub partners_file: Option<PathBuf>,
    /// Per-program settings (JSON object keyed by program id) for the `files` source.
    pub program_settings_file: Option<PathBuf>,
    /// Matcher budget: the heap all regex rows of a table may take once compiled (regexes,
    /// fallback sets, a first search cache each, literal indexes). `codes import` refuses a
    /// table over it and a worker keeps its table rather than load one.
    pub max_regex_bytes: usize,
    /// Most regex rows one program may have.
    pub max_regex_rows_per_program: usize,
}

impl Default for CodesSettings {
    fn default() -> Self {
        CodesSettings {
            source: None,
            codes_file: None,
            partners_file: None,
            program_settings_file: None,
            // 10,000 `^(?i)(SUMMER1).*` rows take ~180 MiB; 1,000 `\w{5}Q1` rows ~420 MiB.
            max_regex_bytes: 256 * 1024 * 1024,
            max_regex_rows_per_program: 10_000,
        }
    }
}

impl CodesSettings {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.max_regex_bytes == 0 {
            problems.push("codes.max_regex_bytes must be greater than 0".into());
        }
        if self.max_regex_rows_per_program == 0 {
            problems.push("codes.max_regex_rows_per_program must be greater than 0".into());
        }
    }

    /// How tables are built under these settings.
    pub fn build_options(&self) -> crate::codes::table::BuildOptions {
        crate::codes::table::BuildOptions {
            max_regex_bytes: self.max_regex_bytes,
            max_regex_rows_per_program: self.max_regex_rows_per_program,
            ..crate::codes::table::BuildOptions::default()
        }
    }

    pub fn effective_source(&self) -> CodeSource {
        self.source.unwrap_or(if self.codes_file.is_some() {
            CodeSource::Files
        } else {
            CodeSource::Redis
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` listen; empty disables the admin port.
    pub listen: String,
    /// Without progress of the poll loop for this long, `/readyz` fails; for twice as long,
    /// `/healthz` fails too, so the supervisor restarts a hung worker.
    pub stall_after_secs: u64,
    /// A connection must deliver a request's whole header within this time, the first request
    /// and each later one on a kept-alive connection alike, or it is closed: this is both the
    /// slow-header and the idle timeout.
    pub header_timeout_secs: u64,
    /// Open connections at most; a new one beyond that closes the oldest, so a flood of idle
    /// sockets cannot lock out the kubelet's probes.
    pub max_connections: usize,
    /// Largest request header (request line included); larger gets 431. Bodies are refused (413):
    /// no endpoint takes one.
    pub max_header_bytes: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "127.0.0.1:9464".into(),
            stall_after_secs: 60,
            header_timeout_secs: 5,
            max_connections: 64,
            max_header_bytes: 8192,
        }
    }
}

impl AdminSettings {
    pub(super) fn check_limits(&self, problems: &mut Vec<String>) {
        if self.header_timeout_secs == 0 {
            problems.push("admin.header_timeout_secs must be greater than 0".into());
        }
        if self.max_connections == 0 {
            problems.push("admin.max_connections must be greater than 0".into());
        }
        // A probe's request is ~100 bytes; below 1 KiB even a curl with a few headers fails.
        if self.max_header_bytes < 1024 {
            problems.push("admin.max_header_bytes must be at least 1024".into());
        }
    }

    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            format!(
                "admin.listen {:?} is not an address like 127.0.0.1:9464",
                self.listen
            )
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter, e.g. `info,promo_attribution=debug`.
    pub log_filter: String,
    /// After SIGTERM the open batch is committed and the worker exits within this time; a second
    /// signal exits at once.
    pub shutdown_deadline_secs: u64,
    /// Longest pause between retries of a transient failure.
    pub max_backoff_ms: u64,
    /// A warning that repeats (an unreachable broker, a failing accept) is logged the first
    /// time, then at most once per this long with the count of the repeats not logged.
    pub repeated_warning_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            shutdown_deadline_secs: 30,
            max_backoff_ms: 5000,
            repeated_warning_secs: 10,
        }
    }
}

impl WorkerSettings {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.shutdown_deadline_secs == 0 {
            problems.push("worker.shutdown_deadline_secs must be greater than 0".into());
        }
        if self.repeated_warning_secs == 0 {
            problems.push("worker.repeated_warning_secs must be greater than 0".into());
        }
        if self.max_backoff_ms < 10 {
            problems.push("worker.max_backoff_ms must be at least 10".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_instance_id_follows_the_transactional_id_unless_set() {
        let mut kafka = KafkaSettings {
            transactional_id: "promo-0".into(),
            static_membership: true,
            ..KafkaSettings::default()
        };
        assert_eq!(
            kafka.effective_group_instance_id().as_deref(),
            Some("promo-0")
        );
        kafka.group_instance_id = "pod-a".into();
        assert_eq!(
            kafka.effective_group_instance_id().as_deref(),
            Some("pod-a")
        );
        kafka.static_membership = false;
        assert_eq!(kafka.effective_group_instance_id(), None);
    }

    #[test]
    fn batch_min_ms_may_not_exceed_batch_max_ms() {
        let mut kafka = KafkaSettings::default();
        let mut problems = Vec::new();
        kafka.check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        kafka.batch_min_ms = kafka.batch_max_ms;
        kafka.check(&mut problems);
        assert!(problems.is_empty(), "equal is allowed: {problems:?}");
        kafka.batch_min_ms = kafka.batch_max_ms + 1;
        kafka.check(&mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("kafka.batch_min_ms"), "{problems:?}");
    }
}
