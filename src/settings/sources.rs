//! Where settings come from, in increasing precedence: the TOML file, `PROMO__…` environment
//! variables, then `--set key=value` flags. Every problem is collected and reported at once, so
//! an operator fixes a broken deployment in one round.
//!
//! Environment names mirror the TOML path in upper case with `__` between levels:
//! `PROMO__KAFKA__BROKERS`, `PROMO__ADMIN__LISTEN`. Inside the librdkafka passthrough tables
//! (`kafka.common`, `kafka.consumer`, `kafka.producer`) a `_` stands for the property's `.`:
//! `PROMO__KAFKA__COMMON__SASL_PASSWORD` sets `sasl.password`.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::origin::{Origin, Origins, parse_file, scrub};
use super::{Settings, SettingsError};

pub const ENV_PREFIX: &str = "PROMO__";
const PASSTHROUGH: [&str; 3] = ["common", "consumer", "producer"];
const SECTIONS: [&str; 9] = [
    "attribution",
    "limits",
    "kafka",
    "codes",
    "store",
    "detectors",
    "admin",
    "worker",
    "reversals",
];
/// Problems reported per section before giving up on it (each one costs a re-parse).
const MAX_PROBLEMS_PER_SECTION: usize = 64;

/// A dedicated flag standing for one setting (`--brokers` for `kafka.brokers`).
#[derive(Debug, Clone)]
pub struct FlagOverride {
    pub flag: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default)]
pub struct SettingsSources {
    pub file: Option<PathBuf>,
    /// `(NAME, value)` pairs; only names starting with [`ENV_PREFIX`] are used.
    pub env: Vec<(String, String)>,
    /// `dotted.key=value` overrides (`--set`).
    pub overrides: Vec<String>,
    /// Dedicated flags; they win over `--set`.
    pub flags: Vec<FlagOverride>,
}

impl SettingsSources {
    /// The file and overrides given, with this process's environment.
    pub fn with_process_env(file: Option<PathBuf>, overrides: Vec<String>) -> SettingsSources {
        SettingsSources {
            file,
            env: std::env::vars().collect(),
            overrides,
            flags: Vec::new(),
        }
    }

    /// Adds a dedicated flag's value, when it was given.
    pub fn flag(mut self, flag: &str, key: &str, value: Option<String>) -> SettingsSources {
        if let Some(value) = value {
            self.flags.push(FlagOverride {
                flag: flag.to_string(),
                key: key.to_string(),
                value,
            });
        }
        self
    }

    pub fn load(&self) -> Result<Settings, SettingsError> {
        self.load_with_origins().map(|(settings, _)| settings)
    }

    /// The settings and where each key that was set came from (keys left at their default
    /// have no origin).
    pub fn load_with_origins(&self) -> Result<(Settings, Origins), SettingsError> {
        let mut problems = Vec::new();
        let mut origins = Origins::default();
        let mut root = match &self.file {
            None => Table::new(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(source) => {
                    return Err(SettingsError::Read {
                        path: path.display().to_string(),
                        source,
                    });
                }
                Ok(text) => parse_file(
                    &path.display().to_string(),
                    &text,
                    &mut origins,
                    &mut problems,
                ),
            },
        };
        let defaults = Value::try_from(Settings::default()).ok();
        let mut layer = Layer {
            root: &mut root,
            defaults: defaults.as_ref(),
            origins: &mut origins,
            problems: &mut problems,
        };
        for (name, value) in &self.env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
                layer.apply(&path, value, true, Origin::Env(name.clone()));
            }
        }
        for item in &self.overrides {
            match item.split_once('=') {
                Some((key, value)) => {
                    let key = key.trim();
                    let path: Vec<String> = key.split('.').map(str::to_string).collect();
                    layer.apply(&path, value, false, Origin::Flag(format!("--set {key}")));
                }
                None => layer.problems.push(format!(
                    "--set {item:?}: expected the form dotted.key=value"
                )),
            }
        }
        for flag in &self.flags {
            let path: Vec<String> = flag.key.split('.').map(str::to_string).collect();
            layer.apply(&path, &flag.value, false, Origin::Flag(flag.flag.clone()));
        }
        let mut sections = Sections {
            root: &root,
            origins: &origins,
            problems: &mut problems,
        };
        let settings = Settings {
            attribution: sections.get("attribution"),
            limits: sections.get("limits"),
            kafka: sections.get("kafka"),
            codes: sections.get("codes"),
            store: sections.get("store"),
            detectors: sections.get("detectors"),
            admin: sections.get("admin"),
            worker: sections.get("worker"),
            reversals: sections.get("reversals"),
        };
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                let origin = origins
                    .of(key)
                    .map(|o| format!(" (from {o})"))
                    .unwrap_or_default();
                problems.push(format!(
                    "unknown section [{key}]{origin}; expected one of {}",
                    SECTIONS.join(", ")
                ));
            }
        }
        if let Err(more) = settings.check() {
            problems.extend(more.into_iter().map(|p| origins.annotate(p)));
        }
        if problems.is_empty() {
            Ok((settings, origins))
        } else {
            Err(SettingsError::Problems(problems))
        }
    }
}

struct Sections<'a> {
    root: &'a Table,
    origins: &'a Origins,
    problems: &'a mut Vec<String>,
}

impl Sections<'_> {
    /// The section typed, every bad key reported: a key that does not deserialize is reported
    /// with its path and source, removed (its default applies) and the section read again, so
    /// one bad key does not hide the next.
    fn get<T: DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let Some(mut value) = self.root.get(name).cloned() else {
            return T::default();
        };
        for _ in 0..MAX_PROBLEMS_PER_SECTION {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(section) => return section,
                Err(error) => error,
            };
            let keys: Vec<String> = error
                .path()
                .iter()
                .map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => key.clone(),
                    serde_path_to_error::Segment::Seq { index } => index.to_string(),
                    serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                    serde_path_to_error::Segment::Unknown => "?".to_string(),
                })
                .collect();
            let dotted = std::iter::once(name.to_string())
                .chain(keys.iter().cloned())
                .collect::<Vec<_>>()
                .join(".");
            let origin = self
                .origins
                .of(&dotted)
                .map(|o| format!(" (from {o})"))
                .unwrap_or_default();
            let message = scrub(&dotted, error.inner().message().trim());
            self.problems.push(format!("{dotted}: {message}{origin}"));
            if keys.is_empty() || !remove(&mut value, &keys) {
                break;
            }
        }
        T::default()
    }
}

/// Removes the value at `keys`; false when there was none.
fn remove(value: &mut Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut current = value;
    for key in parents {
        match current {
            Value::Table(table) => match table.get_mut(key) {
                Some(inner) => current = inner,
                None => return false,
            },
            _ => return false,
        }
    }
    match current {
        Value::Table(table) => table.remove(last).is_some(),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(index) if index < items.len() => {
                items.remove(index);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// One override source being applied on top of the file.
struct Layer<'a> {
    root: &'a mut Table,
    defaults: Option<&'a Value>,
    origins: &'a mut Origins,
    problems: &'a mut Vec<String>,
}

impl Layer<'_> {
    /// Sets `path` to `raw`, typed like the default value at that path (so `"8"` becomes a
    /// number where a number is expected and stays text where text is).
    fn apply(&mut self, path: &[String], raw: &str, from_env: bool, origin: Origin) {
        let path = normalise_path(path, from_env);
        let dotted = path.join(".");
        let Some((last, parents)) = path.split_last() else {
            self.problems.push(format!("{origin}: empty key"));
            return;
        };
        let shown = if super::secret::is_secret_key(&dotted) {
            "(secret)".to_string()
        } else {
            format!("{raw:?}")
        };
        let default = self
            .defaults
            .and_then(|d| path.iter().try_fold(d, |v, k| v.get(k.as_str())));
        let value = match default {
            Some(Value::Integer(_)) => match raw.trim().parse::<i64>() {
                Ok(n) => Value::Integer(n),
                Err(_) => {
                    self.problems.push(format!(
                        "{dotted}: {shown} is not a whole number; expected digits such as 100 (from {origin})"
                    ));
                    return;
                }
            },
            Some(Value::Boolean(_)) => match raw.trim() {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => {
                    self.problems.push(format!(
                        "{dotted}: {shown} is not true or false (from {origin})"
                    ));
                    return;
                }
            },
            _ => Value::String(raw.to_string()),
        };
        let mut table = &mut *self.root;
        for key in parents {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(inner) => table = inner,
                _ => {
                    self.problems
                        .push(format!("{dotted}: {key} is not a section (from {origin})"));
                    return;
                }
            }
        }
        table.insert(last.clone(), value);
        self.origins.set(dotted, origin);
    }
}

/// Rejoins librdkafka property names, which contain dots, below the passthrough tables.
fn normalise_path(path: &[String], from_env: bool) -> Vec<String> {
    if path.len() > 2 && path[0] == "kafka" && PASSTHROUGH.contains(&path[1].as_str()) {
        let property = if from_env {
            path[2..].join("_").replace('_', ".")
        } else {
            path[2..].join(".")
        };
        return vec![path[0].clone(), path[1].clone(), property];
    }
    path.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Delivery;

    fn sources(
        file: &str,
        env: &[(&str, &str)],
        overrides: &[&str],
    ) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().map_err(|source| SettingsError::Read {
            path: "tmp".into(),
            source,
        })?;
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, file).map_err(|source| SettingsError::Read {
            path: "tmp".into(),
            source,
        })?;
        SettingsSources {
            file: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            flags: Vec::new(),
        }
        .load()
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let settings = sources(
            "[kafka]\nbrokers = \"file:9092\"\nbatch_max_records = 10\n",
            &[
                ("PROMO__KAFKA__BROKERS", "env:9092"),
                ("PROMO__KAFKA__BATCH_MAX_MS", "250"),
                ("PROMO__KAFKA__COMMON__SASL_PASSWORD", "secret"),
                ("UNRELATED", "x"),
            ],
            &[
                "kafka.batch_max_records=20",
                "kafka.delivery=at-least-once",
                "kafka.consumer.fetch.min.bytes=1024",
            ],
        )
        .expect("valid");
        assert_eq!(settings.kafka.brokers, "env:9092");
        assert_eq!(settings.kafka.batch_max_ms, 250);
        assert_eq!(settings.kafka.batch_max_records, 20);
        assert_eq!(settings.kafka.delivery, Delivery::AtLeastOnce);
        assert_eq!(
            settings
                .kafka
                .common
                .get("sasl.password")
                .map(String::as_str),
            Some("secret")
        );
        assert_eq!(
            settings
                .kafka
                .consumer
                .get("fetch.min.bytes")
                .map(String::as_str),
            Some("1024")
        );
    }

    #[test]
    fn each_bad_key_is_named_with_its_source_and_none_hides_another() {
        let err = sources(
            "[kafka]\nbatch_max_records = -5\ngroup_id = 7\n",
            &[],
            &["kafka.delivery=exactly_once", "kafka.batch_max_ms=-1"],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for expected in [
            "kafka.batch_max_records: invalid value: integer `-5`, expected usize (from ",
            "kafka.group_id: invalid type: integer `7`, expected a string (from ",
            "settings.toml line 3)",
            "kafka.delivery: unknown variant `exactly_once`, expected `exactly-once` or `at-least-once` (from flag --set kafka.delivery)",
            "kafka.batch_max_ms: invalid value: integer `-1`, expected u64 (from flag --set kafka.batch_max_ms)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn secret_values_never_appear_in_problems() {
        let err = sources(
            "[detectors]\ncustomer_hmac_key = 918273645\n[store]\nredis_url = \"user:hunter2\"\n",
            &[("PROMO__KAFKA__COMMON__SASL_PASSWORD", "")],
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            !text.contains("918273645") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(
            text.contains("detectors.customer_hmac_key: invalid value (not shown"),
            "{text}"
        );
        assert!(text.contains("store.redis_url must start with"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = sources(
            "[worker]\nlog_format = \"xml\"\n[limits]\nmax_code_bytes = 0\n[bogus]\nx = 1\n[admin]\nlisten = \"nowhere\"\n",
            &[("PROMO__WORKER__SHUTDOWN_DEADLINE_SECS", "soon")],
            &["kafka.consumer.enable.auto.commit=true", "novalue"],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for expected in [
            "worker.log_format: unknown variant `xml`, expected `text` or `json` (from ",
            "settings.toml line 2)",
            "(from environment variable PROMO__WORKER__SHUTDOWN_DEADLINE_SECS)",
            "enable.auto.commit\" is set by the worker from its own settings and cannot be overridden (from flag --set kafka.consumer.enable.auto.commit)",
            "unknown section [bogus]",
            "max_code_bytes",
            "not a whole number",
            "enable.auto.commit",
            "expected the form dotted.key=value",
            "admin.listen",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
