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

use super::{Settings, SettingsError};

pub const ENV_PREFIX: &str = "PROMO__";
const PASSTHROUGH: [&str; 3] = ["common", "consumer", "producer"];

#[derive(Debug, Clone, Default)]
pub struct SettingsSources {
    pub file: Option<PathBuf>,
    /// `(NAME, value)` pairs; only names starting with [`ENV_PREFIX`] are used.
    pub env: Vec<(String, String)>,
    /// `dotted.key=value` overrides.
    pub overrides: Vec<String>,
}

impl SettingsSources {
    /// The file and overrides given, with this process's environment.
    pub fn with_process_env(file: Option<PathBuf>, overrides: Vec<String>) -> SettingsSources {
        SettingsSources {
            file,
            env: std::env::vars().collect(),
            overrides,
        }
    }

    pub fn load(&self) -> Result<Settings, SettingsError> {
        let mut problems = Vec::new();
        let mut root = match &self.file {
            None => Table::new(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(source) => {
                    return Err(SettingsError::Read {
                        path: path.display().to_string(),
                        source,
                    });
                }
                Ok(text) => text.parse::<Table>().unwrap_or_else(|e| {
                    problems.push(format!("{}: {e}", path.display()));
                    Table::new()
                }),
            },
        };
        let defaults = Value::try_from(Settings::default()).ok();
        for (name, value) in &self.env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
                apply(
                    &mut root,
                    &path,
                    value,
                    defaults.as_ref(),
                    true,
                    name,
                    &mut problems,
                );
            }
        }
        for item in &self.overrides {
            match item.split_once('=') {
                Some((key, value)) => {
                    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
                    apply(
                        &mut root,
                        &path,
                        value,
                        defaults.as_ref(),
                        false,
                        item,
                        &mut problems,
                    );
                }
                None => problems.push(format!("--set {item:?}: expected key=value")),
            }
        }
        let settings = Settings {
            attribution: section(&root, "attribution", &mut problems),
            limits: section(&root, "limits", &mut problems),
            kafka: section(&root, "kafka", &mut problems),
            codes: section(&root, "codes", &mut problems),
            store: section(&root, "store", &mut problems),
            detectors: section(&root, "detectors", &mut problems),
            admin: section(&root, "admin", &mut problems),
            worker: section(&root, "worker", &mut problems),
            reversals: section(&root, "reversals", &mut problems),
        };
        for key in root.keys() {
            if ![
                "attribution",
                "limits",
                "kafka",
                "codes",
                "store",
                "detectors",
                "admin",
                "worker",
                "reversals",
            ]
            .contains(&key.as_str())
            {
                problems.push(format!("unknown section [{key}]"));
            }
        }
        if let Err(more) = settings.check() {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError::Problems(problems))
        }
    }
}

fn section<T: DeserializeOwned + Default>(
    root: &Table,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    match root.get(name) {
        None => T::default(),
        Some(value) => value
            .clone()
            .try_into()
            .unwrap_or_else(|e: toml::de::Error| {
                problems.push(format!("[{name}]: {}", e.message().trim()));
                T::default()
            }),
    }
}

/// Sets `path` in `root` to `raw`, typed like the default value at that path (so `"8"` becomes
/// a number where a number is expected and stays text where text is).
fn apply(
    root: &mut Table,
    path: &[String],
    raw: &str,
    defaults: Option<&Value>,
    from_env: bool,
    origin: &str,
    problems: &mut Vec<String>,
) {
    let path = normalise_path(path, from_env);
    let Some((last, parents)) = path.split_last() else {
        problems.push(format!("{origin}: empty key"));
        return;
    };
    let default = defaults.and_then(|d| path.iter().try_fold(d, |v, k| v.get(k.as_str())));
    let value = match default {
        Some(Value::Integer(_)) => match raw.trim().parse::<i64>() {
            Ok(n) => Value::Integer(n),
            Err(_) => {
                problems.push(format!("{origin}: {raw:?} is not a whole number"));
                return;
            }
        },
        Some(Value::Boolean(_)) => match raw.trim() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => {
                problems.push(format!("{origin}: {raw:?} is not true or false"));
                return;
            }
        },
        _ => Value::String(raw.to_string()),
    };
    let mut table = root;
    for key in parents {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(inner) => table = inner,
            _ => {
                problems.push(format!("{origin}: {key} is not a section"));
                return;
            }
        }
    }
    table.insert(last.clone(), value);
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
    fn every_problem_is_reported_at_once() {
        let err = sources(
            "[worker]\nlog_format = \"xml\"\n[limits]\nmax_code_bytes = 0\n[bogus]\nx = 1\n[admin]\nlisten = \"nowhere\"\n",
            &[("PROMO__WORKER__SHUTDOWN_DEADLINE_SECS", "soon")],
            &["kafka.consumer.enable.auto.commit=true", "novalue"],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for expected in [
            "[worker]",
            "xml",
            "unknown section [bogus]",
            "max_code_bytes",
            "not a whole number",
            "enable.auto.commit",
            "expected key=value",
            "admin.listen",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
