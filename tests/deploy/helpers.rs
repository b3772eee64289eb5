//! Shared helpers of the deployment checks: reading the repository's files (YAML with merge
//! keys, compose environments and durations) and running the worker binary and
//! `scripts/prometheus`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize as _;
use serde_norway::Value as Yaml;

use crate::support::repo;

// ---------------------------------------------------------------------------------------------
// Files

pub(super) fn path(relative: &str) -> PathBuf {
    repo().join(relative)
}

pub(super) fn read_text(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// Every document of a YAML file, with `<<` merge keys applied.
pub(super) fn yaml_docs(relative: &str) -> Vec<Yaml> {
    let text = read_text(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
            value
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

pub(super) fn yaml(relative: &str) -> Yaml {
    let mut docs = yaml_docs(relative);
    assert_eq!(docs.len(), 1, "{relative}: one YAML document expected");
    docs.remove(0)
}

/// The value at a path of mapping keys; `Null` where any step is missing.
pub(super) fn at<'a>(value: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    keys.iter().fold(value, |v, k| &v[*k])
}

pub(super) fn text_at(value: &Yaml, keys: &[&str]) -> String {
    match at(value, keys) {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("{} is not a scalar: {other:?}", keys.join(".")),
    }
}

pub(super) fn seq<'a>(value: &'a Yaml, keys: &[&str]) -> &'a [Yaml] {
    at(value, keys)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{} is not a list", keys.join(".")))
}

pub(super) fn map_keys(value: &Yaml, keys: &[&str]) -> BTreeSet<String> {
    at(value, keys)
        .as_mapping()
        .unwrap_or_else(|| panic!("{} is not a mapping", keys.join(".")))
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

/// A compose `environment:` as pairs, whether written as a mapping or as `KEY=value` items.
pub(super) fn compose_env(service: &Yaml) -> Vec<(String, String)> {
    match &service["environment"] {
        Yaml::Null => Vec::new(),
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?} is not a scalar"),
                };
                (k.as_str().expect("env name").to_owned(), value)
            })
            .collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("environment item is text");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment is neither a mapping nor a list: {other:?}"),
    }
}

/// Compose durations as used here (`45s`, `1m30s`), in seconds.
pub(super) fn compose_seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("duration {text:?}"));
        number.clear();
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            _ => panic!("duration {text:?}: unit {c:?}"),
        };
    }
    assert!(number.is_empty(), "duration {text:?} lacks a unit");
    total
}

// ---------------------------------------------------------------------------------------------
// The worker binary

pub(super) fn worker_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_promo-attribution"));
    // The developer's own PROMO__* variables must not leak into a check of the files' settings.
    for (name, _) in std::env::vars() {
        if name.starts_with("PROMO__") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

pub(super) fn run_check_config(config: &Path, env: &[(String, String)]) -> Output {
    worker_binary()
        .args(["run", "--check-config", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run promo-attribution --check-config")
}

pub(super) fn dummy_secret(name: &str) -> String {
    if name.ends_with("REDIS_URL") {
        "redis://:secret@redis.example:6379/0".into()
    } else {
        // 64 hex digits: acceptable wherever a key of some length is expected.
        "0123456789abcdef".repeat(4)
    }
}

/// `out`'s stdout, after asserting that the command succeeded (else its output is the message).
pub(super) fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what} printed non-UTF-8: {e}"))
}

/// `scripts/prometheus` with its subcommand and arguments.
pub(super) fn scripts_prometheus(command: &str) -> Command {
    let mut script = Command::new("bash");
    script
        .arg(path("scripts/prometheus"))
        .arg(command)
        .current_dir(repo());
    script
}

/// The effective settings (`--check-config` output) of `config` with the environment `env`, as
/// TOML; fails with the worker's own list of problems.
pub(super) fn effective_settings(
    what: &str,
    config: &Path,
    env: &[(String, String)],
) -> toml::Table {
    let text = succeeded(
        &format!("{what}: the worker's --check-config"),
        run_check_config(config, env),
    );
    text.parse()
        .unwrap_or_else(|e| panic!("{what}: --check-config output is not TOML ({e}):\n{text}"))
}

pub(super) fn setting<'a>(settings: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    settings
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("no {section}.{key} in the effective settings"))
}

pub(super) fn setting_str(settings: &toml::Table, section: &str, key: &str) -> String {
    setting(settings, section, key)
        .as_str()
        .unwrap_or_else(|| panic!("{section}.{key} is not text"))
        .to_owned()
}

pub(super) fn setting_int(settings: &toml::Table, section: &str, key: &str) -> i64 {
    setting(settings, section, key)
        .as_integer()
        .unwrap_or_else(|| panic!("{section}.{key} is not a whole number"))
}

pub(super) fn admin_port(settings: &toml::Table) -> u16 {
    let listen = setting_str(settings, "admin", "listen");
    let addr: SocketAddr = listen
        .parse()
        .unwrap_or_else(|_| panic!("admin.listen {listen:?} is not an address"));
    assert!(
        addr.ip().is_unspecified(),
        "admin.listen {listen} must listen on all interfaces in a container, or nothing outside can probe or scrape it"
    );
    addr.port()
}
