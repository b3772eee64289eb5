//! Checks of the deployment files that run without a container engine or a cluster:
//!
//! - `docker-compose.yml` (against the Compose specification's types) and `deploy/Dockerfile`:
//!   they reference files that exist, the Kafka settings exactly-once needs on one node, health
//!   checks that make `up --wait` meaningful;
//! - `deploy/k8s/`: probes on the admin port, a grace period above the drain deadline, a
//!   transactional id per pod, ConfigMap and Secret references that resolve, scraping, and a KEDA
//!   ScaledObject capped at the partition count;
//! - the worker settings in compose and in the ConfigMap, with the environment each sets, are
//!   accepted by the worker binary itself (`run --check-config`);
//! - the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`);
//! - live, the compose pipeline minus Docker: the code loader's command publishes the samples to
//!   Redis, a worker with the compose worker's settings (addresses replaced) decides the sample
//!   orders, its `/metrics` passes `promtool check metrics`, and a real Prometheus (Debian's
//!   package, through `scripts/prometheus`) scraping it answers every dashboard query and every
//!   metric of the alert rules with data, and evaluates the rules without errors.
//!
//! promtool and Prometheus are installed by `scripts/prometheus` when missing; like the broker
//! and Redis, they are never a reason to skip.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use promo_attribution::kafka::tools;
use serde::Deserialize as _;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use support::{ChildWorker, Names, brokers, repo, wait_until};

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const DATA_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Files

fn path(relative: &str) -> PathBuf {
    repo().join(relative)
}

fn read_text(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// Every document of a YAML file, with `<<` merge keys applied.
fn yaml_docs(relative: &str) -> Vec<Yaml> {
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

fn yaml(relative: &str) -> Yaml {
    let mut docs = yaml_docs(relative);
    assert_eq!(docs.len(), 1, "{relative}: one YAML document expected");
    docs.remove(0)
}

/// The value at a path of mapping keys; `Null` where any step is missing.
fn at<'a>(value: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    keys.iter().fold(value, |v, k| &v[*k])
}

fn text_at(value: &Yaml, keys: &[&str]) -> String {
    match at(value, keys) {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("{} is not a scalar: {other:?}", keys.join(".")),
    }
}

fn seq<'a>(value: &'a Yaml, keys: &[&str]) -> &'a [Yaml] {
    at(value, keys)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{} is not a list", keys.join(".")))
}

fn map_keys(value: &Yaml, keys: &[&str]) -> BTreeSet<String> {
    at(value, keys)
        .as_mapping()
        .unwrap_or_else(|| panic!("{} is not a mapping", keys.join(".")))
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

/// A compose `environment:` as pairs, whether written as a mapping or as `KEY=value` items.
fn compose_env(service: &Yaml) -> Vec<(String, String)> {
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
fn compose_seconds(text: &str) -> u64 {
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

fn worker_binary() -> Command {
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

fn run_check_config(config: &Path, env: &[(String, String)]) -> Output {
    worker_binary()
        .args(["run", "--check-config", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run promo-attribution --check-config")
}

fn dummy_secret(name: &str) -> String {
    if name.ends_with("REDIS_URL") {
        "redis://:secret@redis.example:6379/0".into()
    } else {
        // 64 hex digits: acceptable wherever a key of some length is expected.
        "0123456789abcdef".repeat(4)
    }
}

/// `out`'s stdout, after asserting that the command succeeded (else its output is the message).
fn succeeded(what: &str, out: Output) -> String {
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
fn scripts_prometheus(command: &str) -> Command {
    let mut script = Command::new("bash");
    script
        .arg(path("scripts/prometheus"))
        .arg(command)
        .current_dir(repo());
    script
}

/// The effective settings (`--check-config` output) of `config` with the environment `env`, as
/// TOML; fails with the worker's own list of problems.
fn effective_settings(what: &str, config: &Path, env: &[(String, String)]) -> toml::Table {
    let text = succeeded(
        &format!("{what}: the worker's --check-config"),
        run_check_config(config, env),
    );
    text.parse()
        .unwrap_or_else(|e| panic!("{what}: --check-config output is not TOML ({e}):\n{text}"))
}

fn setting<'a>(settings: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    settings
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("no {section}.{key} in the effective settings"))
}

fn setting_str(settings: &toml::Table, section: &str, key: &str) -> String {
    setting(settings, section, key)
        .as_str()
        .unwrap_or_else(|| panic!("{section}.{key} is not text"))
        .to_owned()
}

fn setting_int(settings: &toml::Table, section: &str, key: &str) -> i64 {
    setting(settings, section, key)
        .as_integer()
        .unwrap_or_else(|| panic!("{section}.{key} is not a whole number"))
}

fn admin_port(settings: &toml::Table) -> u16 {
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

// ---------------------------------------------------------------------------------------------
// docker-compose.yml and the Dockerfile

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = at(compose, &["services", name]);
    assert!(
        service.is_mapping(),
        "docker-compose.yml has no service {name}"
    );
    service
}

/// The host side of a bind mount (`./x:/y[:ro]`), if `volume` is one.
fn bind_source(volume: &Yaml) -> Option<(String, String)> {
    match volume {
        Yaml::String(s) => {
            let mut parts = s.splitn(3, ':');
            let source = parts.next()?;
            let target = parts.next()?;
            (source.starts_with("./") || source.starts_with('/') || source.starts_with("../"))
                .then(|| (source.to_owned(), target.to_owned()))
        }
        Yaml::Mapping(_) if volume["type"].as_str() == Some("bind") => Some((
            volume["source"].as_str()?.to_owned(),
            volume["target"].as_str()?.to_owned(),
        )),
        _ => None,
    }
}

/// Bind mounts of a service: container path -> repository path.
fn binds(service: &Yaml) -> BTreeMap<String, String> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(bind_source)
        .map(|(source, target)| (target, source))
        .collect()
}

fn command_words(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| i.as_str().expect("command word is text").to_owned())
            .collect(),
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_file_parses_and_references_files_that_exist() {
    // Against the Compose specification's types: unknown keys, malformed ports, durations,
    // depends_on conditions and undeclared named volumes or networks are errors.
    let spec = compose_spec::Compose::options()
        .apply_merge(true)
        .from_yaml_str(&read_text("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml is not a valid Compose file: {e}"));
    spec.validate_all()
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));

    let compose = compose();
    let services = map_keys(&compose, &["services"]);
    for wanted in [
        "kafka",
        "kafka-init",
        "redis",
        "codes-loader",
        "worker",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(wanted), "compose lacks service {wanted}");
    }

    let named_volumes = map_keys(&compose, &["volumes"]);
    for name in &services {
        let svc = service(&compose, name);
        // Named volumes are declared (an undeclared one is a typo that would lose data).
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            if bind_source(volume).is_none() {
                let text = volume.as_str().expect("short volume syntax");
                let source = text.split(':').next().unwrap_or_default();
                assert!(
                    named_volumes.contains(source),
                    "service {name} uses volume {source}, which is not declared"
                );
            }
        }
        // Every file the compose file points at exists.
        for (target, source) in binds(svc) {
            let source = source.trim_start_matches("./");
            assert!(
                path(source).exists(),
                "service {name} mounts ./{source} at {target}, which does not exist"
            );
        }
        if !svc["build"].is_null() {
            let context = svc["build"]["context"].as_str().unwrap_or(".");
            let dockerfile = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                path(context).join(dockerfile).is_file(),
                "service {name} builds {context}/{dockerfile}, which does not exist"
            );
        }
        for file in svc["env_file"].as_sequence().into_iter().flatten() {
            let file = file.as_str().expect("env_file is text");
            assert!(
                path(file).is_file(),
                "service {name}: env_file {file} missing"
            );
        }
        // depends_on names services that exist, and waits for health only where there is one.
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = dep.as_str().expect("depends_on key");
                assert!(
                    services.contains(dep),
                    "{name} depends on unknown service {dep}"
                );
                if how["condition"].as_str() == Some("service_healthy") {
                    assert!(
                        !service(&compose, dep)["healthcheck"].is_null(),
                        "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                    );
                }
            }
        }
        // `up --wait` means ready: long-running services report health, and one-shot services
        // are adopted by a service that waits for their successful exit (otherwise `--wait`
        // counts their exit 0 as a failure).
        let one_shot = svc["restart"].as_str() == Some("no");
        if one_shot {
            let adopted = services.iter().any(|other| {
                service(&compose, other)["depends_on"][name.as_str()]["condition"].as_str()
                    == Some("service_completed_successfully")
            });
            assert!(
                adopted,
                "one-shot service {name} is not awaited with service_completed_successfully by any service"
            );
        } else {
            assert!(
                !svc["healthcheck"]["test"].is_null(),
                "long-running service {name} has no healthcheck, so `up --wait` cannot tell it is ready"
            );
        }
    }

    // One Apache Kafka node in KRaft mode, with the internal topics exactly-once needs at one
    // replica (the defaults of 3 would leave the transaction coordinator unavailable).
    let kafka = service(&compose, "kafka");
    let image = kafka["image"].as_str().expect("kafka image");
    assert!(image.starts_with("apache/kafka:"), "kafka image {image}");
    let env: BTreeMap<String, String> = compose_env(kafka).into_iter().collect();
    let roles: BTreeSet<&str> = env["KAFKA_PROCESS_ROLES"]
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]));
    for (key, value) in [
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
    ] {
        assert_eq!(env.get(key).map(String::as_str), Some(value), "kafka {key}");
    }
    for key in [
        "KAFKA_NODE_ID",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
    ] {
        assert!(env.contains_key(key), "kafka lacks {key}");
    }

    // The topic initialiser creates the worker's topics.
    let init = serde_norway::to_string(&service(&compose, "kafka-init")["command"])
        .expect("kafka-init command");
    let words: BTreeSet<&str> = init
        .split(|c: char| c.is_whitespace() || c == ';' || c == '"')
        .collect();
    assert!(
        init.contains("kafka-topics.sh") && words.contains("--create"),
        "kafka-init creates topics with kafka-topics.sh:\n{init}"
    );
    for topic in ["orders", "promo.conversions", "promo.alerts", "promo.dlq"] {
        assert!(
            words.contains(topic),
            "kafka-init does not create {topic}:\n{init}"
        );
    }

    let loader_env: BTreeMap<String, String> = compose_env(service(&compose, "codes-loader"))
        .into_iter()
        .collect();
    assert!(
        loader_env.contains_key("PROMO__STORE__REDIS_URL"),
        "the loader must be told where Redis is"
    );
}

/// The code loader's command, with the image's paths mapped back to the repository.
fn compose_loader_command() -> Vec<String> {
    let compose = compose();
    let loader = command_words(service(&compose, "codes-loader"));
    assert_eq!(
        loader.get(..2),
        Some(&["codes".to_owned(), "import".to_owned()][..]),
        "the loader imports codes"
    );
    let image_paths = image_copies();
    loader
        .into_iter()
        .map(|word| {
            if !word.starts_with('/') {
                return word;
            }
            let host = image_paths
                .iter()
                .find_map(|(dest, src)| {
                    word.strip_prefix(dest.as_str())
                        .map(|rest| format!("{src}{rest}"))
                })
                .unwrap_or_else(|| {
                    panic!("codes-loader reads {word}, which the image does not contain")
                });
            assert!(
                path(&host).is_file(),
                "codes-loader reads {word} = {host}, missing"
            );
            path(&host).display().to_string()
        })
        .collect()
}

/// The compose worker's effective settings: its config file (through its bind mount) and its
/// environment, as the worker itself reads them.
fn compose_worker_settings(compose: &Yaml) -> toml::Table {
    effective_settings(
        "compose worker",
        &compose_worker_config(compose),
        &compose_env(service(compose, "worker")),
    )
}

/// The repository file the compose worker reads as `--config` (through its bind mount).
fn compose_worker_config(compose: &Yaml) -> PathBuf {
    let worker = service(compose, "worker");
    let words = command_words(worker);
    let config_at = words
        .iter()
        .position(|w| w == "--config")
        .and_then(|i| words.get(i + 1))
        .expect("the compose worker runs with --config");
    let host = binds(worker)
        .get(config_at.as_str())
        .cloned()
        .unwrap_or_else(|| {
            panic!("the compose worker's {config_at} is not mounted from the repository")
        });
    path(host.trim_start_matches("./"))
}

/// Settings that name hosts, ports, topics or groups of the compose network; a test replaces
/// them with its own.
const COMPOSE_NETWORK_SETTINGS: [&str; 9] = [
    "kafka.brokers",
    "kafka.group_id",
    "kafka.input_topic",
    "kafka.conversions_topic",
    "kafka.alerts_topic",
    "kafka.dlq_topic",
    "kafka.transactional_id",
    "store.redis_url",
    "admin.listen",
];

/// The compose worker's settings as `--set key=value` pairs: its config file, then its
/// environment (later wins, as in the worker), without [`COMPOSE_NETWORK_SETTINGS`].
fn compose_worker_sets() -> Vec<String> {
    fn flatten(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let key = format!("{prefix}{key}");
            let text = match value {
                toml::Value::Table(inner) => {
                    flatten(inner, &format!("{key}."), out);
                    continue;
                }
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_) => {
                    value.to_string()
                }
                other => panic!("{key} = {other}: not expressible as --set"),
            };
            out.insert(key, text);
        }
    }
    let compose = compose();
    let config = compose_worker_config(&compose);
    let table: toml::Table = std::fs::read_to_string(&config)
        .expect("read the compose worker's config")
        .parse()
        .expect("the compose worker's config is TOML");
    let mut pairs = BTreeMap::new();
    flatten(&table, "", &mut pairs);
    for (name, value) in compose_env(service(&compose, "worker")) {
        if let Some(rest) = name.strip_prefix("PROMO__") {
            let key: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            pairs.insert(key.join("."), value);
        }
    }
    pairs.retain(|key, _| !COMPOSE_NETWORK_SETTINGS.contains(&key.as_str()));
    pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[test]
fn compose_worker_settings_are_valid_and_match_probes_and_scraping() {
    let compose = compose();
    let settings = compose_worker_settings(&compose);
    let port = admin_port(&settings);
    let worker = service(&compose, "worker");

    assert_eq!(setting_str(&settings, "kafka", "brokers"), "kafka:19092");
    let env: BTreeMap<String, String> = compose_env(service(&compose, "kafka"))
        .into_iter()
        .collect();
    assert!(
        env["KAFKA_ADVERTISED_LISTENERS"].contains("//kafka:19092"),
        "the worker's brokers must be an advertised listener of the broker"
    );
    let redis_url = setting_str(&settings, "store", "redis_url");
    assert!(
        redis_url.contains("//redis:6379"),
        "store.redis_url {redis_url}"
    );

    let deadline = setting_int(&settings, "worker", "shutdown_deadline_secs") as u64;
    let grace = compose_seconds(worker["stop_grace_period"].as_str().unwrap_or("10s"));
    assert!(
        grace > deadline,
        "stop_grace_period {grace}s must exceed worker.shutdown_deadline_secs {deadline}s, or a drain is cut off by SIGKILL"
    );

    let probe = serde_norway::to_string(&worker["healthcheck"]["test"]).expect("healthcheck");
    assert!(
        probe.contains("/readyz") && probe.contains(&format!("/{port}")),
        "the worker healthcheck must probe /readyz on the admin port {port}:\n{probe}"
    );

    // Prometheus (mounted config) scrapes that port under the job the rules select.
    let prometheus = service(&compose, "prometheus");
    let mounts = binds(prometheus);
    let config_host = mounts
        .get("/etc/prometheus/prometheus.yml")
        .expect("prometheus.yml mounted");
    let config = yaml(config_host.trim_start_matches("./"));
    let job = seq(&config, &["scrape_configs"])
        .iter()
        .find(|j| j["job_name"].as_str() == Some("promo-attribution"))
        .expect("a scrape job named promo-attribution");
    let dns_port = job["dns_sd_configs"][0]["port"].as_u64();
    let static_targets = serde_norway::to_string(&job["static_configs"]).unwrap_or_default();
    assert!(
        dns_port == Some(u64::from(port)) || static_targets.contains(&format!(":{port}")),
        "the promo-attribution scrape job does not target the admin port {port}"
    );
    // Rule files resolve next to the config inside the container, so both must be mounted there.
    for rule_file in seq(&config, &["rule_files"]) {
        let rule_file = rule_file.as_str().expect("rule file");
        let in_container = format!("/etc/prometheus/{rule_file}");
        let host = mounts
            .get(&in_container)
            .unwrap_or_else(|| panic!("rule file {in_container} is not mounted"));
        assert_eq!(host, "./deploy/prometheus/rules.yml");
    }

    // Grafana loads the dashboard and the data source its variable defaults to.
    let grafana = binds(service(&compose, "grafana"));
    let provisioning = grafana
        .get("/etc/grafana/provisioning")
        .expect("grafana provisioning mounted");
    let provisioning = provisioning.trim_start_matches("./");
    let providers = yaml(&format!("{provisioning}/dashboards/promo-attribution.yml"));
    let provider_path = seq(&providers, &["providers"])[0]["options"]["path"]
        .as_str()
        .expect("provider path")
        .to_owned();
    let dashboards_host = grafana.get(&provider_path).unwrap_or_else(|| {
        panic!("the dashboard provider reads {provider_path}, which is not mounted")
    });
    assert!(
        path(dashboards_host.trim_start_matches("./"))
            .join("promo-attribution.json")
            .is_file()
    );
    let datasources = yaml(&format!("{provisioning}/datasources/prometheus.yml"));
    let ds = &seq(&datasources, &["datasources"])[0];
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let dashboard = dashboard();
    let default_ds = dashboard["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["type"] == "datasource"))
        .map(|v| v["current"]["value"].clone())
        .expect("a datasource variable");
    assert_eq!(
        default_ds.as_str(),
        ds["uid"].as_str(),
        "the dashboard's datasource variable defaults to the provisioned data source"
    );
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read_text("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    out
}

/// `COPY` into the final image from the build context: destination -> repository path.
fn image_copies() -> Vec<(String, String)> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    instructions[last_from..]
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            assert_eq!(words.len(), 2, "COPY with one source: {args}");
            (words[1].to_owned(), words[0].to_owned())
        })
        .collect()
}

#[test]
fn dockerfile_caches_dependencies_and_runs_as_non_root() {
    let instructions = dockerfile();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with(" AS build"),
        "build stage from the Rust image: {}",
        froms[0]
    );
    let runtime = froms.last().expect("runtime stage");
    assert!(
        runtime.contains("debian:") && runtime.contains("-slim"),
        "slim Debian runtime: {runtime}"
    );

    // Dependencies are built before the sources are copied, so that layer survives code edits.
    let position = |needle: &str| {
        instructions
            .iter()
            .position(|i| i.contains(needle))
            .unwrap_or_else(|| panic!("no instruction with {needle:?}"))
    };
    let manifest = position("COPY Cargo.toml Cargo.lock");
    let sources = position("COPY src ");
    let first_build = position("cargo build --release --locked");
    assert!(manifest < first_build && first_build < sources);
    // The stub build needs every [[bench]] target of Cargo.toml to exist.
    let cargo: toml::Table = read_text("Cargo.toml").parse().expect("Cargo.toml");
    let stub = &instructions[first_build];
    for bench in cargo["bench"].as_array().into_iter().flatten() {
        let name = bench["name"].as_str().expect("bench name");
        assert!(
            stub.contains(name),
            "the dependency stage stubs no benches/{name}.rs; the manifest would not load"
        );
    }
    // The toolchain is the one Cargo.toml promises to build with, which the lockfile's
    // dependency versions were resolved for.
    let rust_version = cargo["package"]["rust-version"]
        .as_str()
        .expect("package.rust-version");
    assert!(
        instructions
            .iter()
            .any(|i| *i == format!("ARG RUST_VERSION={rust_version}")),
        "the build stage's RUST_VERSION must be Cargo.toml's rust-version {rust_version}"
    );

    // Everything copied from the context exists and is not excluded by .dockerignore.
    let ignore = read_text(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore starts from nothing"
    );
    for instruction in instructions.iter().filter_map(|i| i.strip_prefix("COPY ")) {
        if instruction.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = instruction.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                path(source).exists(),
                "COPY {source}: missing in the repository"
            );
            assert!(
                allowed
                    .iter()
                    .any(|a| source.starts_with(a.trim_end_matches('/'))),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }

    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let user = instructions[last_from..]
        .iter()
        .filter_map(|i| i.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid != "0" && uid != "root" && uid.parse::<u32>().is_ok(),
        "runtime user {user}: numeric and not root (Kubernetes runAsNonRoot checks the number)"
    );
    assert!(instructions.iter().any(|i| i == "EXPOSE 9464"));
    assert!(
        instructions
            .iter()
            .any(|i| i.starts_with("ENTRYPOINT [\"promo-attribution\"]"))
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

struct Manifests {
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Manifests {
        let dir = path("deploy/k8s");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("deploy/k8s")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for file in files {
            let relative = format!(
                "deploy/k8s/{}",
                file.file_name().expect("name").to_string_lossy()
            );
            for doc in yaml_docs(&relative) {
                for field in ["apiVersion", "kind"] {
                    assert!(
                        doc[field].is_string(),
                        "{relative}: a document without {field}"
                    );
                }
                if doc["kind"] != "Kustomization" {
                    assert!(
                        doc["metadata"]["name"].is_string(),
                        "{relative}: a {} without metadata.name",
                        text_at(&doc, &["kind"])
                    );
                }
                docs.push((relative.clone(), doc));
            }
        }
        Manifests { docs }
    }

    fn find(&self, kind: &str, name: &str) -> &Yaml {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
    }

    fn only(&self, kind: &str) -> &Yaml {
        let found: Vec<&Yaml> = self
            .docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} in deploy/k8s");
        found[0]
    }
}

/// The value a container env entry resolves to in a pod, for `--check-config`: literals with
/// `$(VAR)` expanded, ConfigMap keys and example Secret values looked up, field refs made up.
fn resolve_env(manifests: &Manifests, env: &[Yaml]) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    for entry in env {
        let name = text_at(entry, &["name"]);
        let from = &entry["valueFrom"];
        let value = if let Some(literal) = entry["value"].as_str() {
            let mut value = literal.to_owned();
            for (k, v) in &resolved {
                value = value.replace(&format!("$({k})"), v);
            }
            assert!(
                !value.contains("$("),
                "{name}: {literal} refers to an undefined variable"
            );
            value
        } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => "promo-attribution-0".into(),
                "metadata.namespace" => "promo".into(),
                other => panic!("{name}: unexpected fieldRef {other}"),
            }
        } else if !from["configMapKeyRef"].is_null() {
            let map = manifests.find("ConfigMap", &text_at(from, &["configMapKeyRef", "name"]));
            let key = text_at(from, &["configMapKeyRef", "key"]);
            map["data"][key.as_str()]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: ConfigMap has no key {key}"))
                .to_owned()
        } else if !from["secretKeyRef"].is_null() {
            let secret = manifests.find("Secret", &text_at(from, &["secretKeyRef", "name"]));
            let key = text_at(from, &["secretKeyRef", "key"]);
            assert!(
                secret["stringData"][key.as_str()].is_string(),
                "{name}: the Secret has no key {key}"
            );
            dummy_secret(&name)
        } else {
            panic!("{name}: no value and no supported valueFrom");
        };
        resolved.push((name, value));
    }
    resolved
}

#[test]
fn kubernetes_manifests_have_the_required_fields() {
    let manifests = Manifests::load();

    let kustomization = manifests.only("Kustomization");
    for resource in seq(kustomization, &["resources"]) {
        let resource = resource.as_str().expect("resource");
        assert!(
            path("deploy/k8s").join(resource).is_file(),
            "kustomization lists {resource}, which does not exist"
        );
    }

    let set = manifests.only("StatefulSet");
    let set_name = text_at(set, &["metadata", "name"]);
    let pod = at(set, &["spec", "template"]);
    let pod_labels = at(pod, &["metadata", "labels"]);
    let selector = at(set, &["spec", "selector", "matchLabels"]);
    for (k, v) in selector.as_mapping().expect("selector") {
        assert_eq!(
            &pod_labels[k.as_str().expect("label")],
            v,
            "selector matches the pod"
        );
    }
    let containers = seq(pod, &["spec", "containers"]);
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];

    // The worker's settings: the ConfigMap's TOML file with the pod's environment.
    let args: Vec<String> = seq(container, &["args"])
        .iter()
        .map(|a| a.as_str().expect("arg").to_owned())
        .collect();
    let config_path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("the container runs with --config");
    let mount = seq(container, &["volumeMounts"])
        .iter()
        .find(|m| config_path.starts_with(&text_at(m, &["mountPath"])))
        .expect("the --config file is on a mounted volume");
    let volume_name = text_at(mount, &["name"]);
    let volume = seq(pod, &["spec", "volumes"])
        .iter()
        .find(|v| v["name"] == volume_name.as_str())
        .expect("the mounted volume is declared");
    let config_map = manifests.find("ConfigMap", &text_at(volume, &["configMap", "name"]));
    let file_name = Path::new(config_path)
        .file_name()
        .expect("config file name")
        .to_string_lossy()
        .into_owned();
    let toml_text = config_map["data"][file_name.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {file_name}"));
    let config_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config_file.path(), toml_text).expect("write the ConfigMap's TOML");
    let env = resolve_env(&manifests, seq(container, &["env"]));
    let settings = effective_settings("Kubernetes worker", config_file.path(), &env);
    let port = admin_port(&settings);

    // Secrets come from the Secret, never from literals or the ConfigMap.
    let env_entries = seq(container, &["env"]);
    for secret in [
        "PROMO__KAFKA__COMMON__SASL_PASSWORD",
        "PROMO__STORE__REDIS_URL",
        "PROMO__DETECTORS__CUSTOMER_HMAC_KEY",
    ] {
        let entry = env_entries
            .iter()
            .find(|e| e["name"] == secret)
            .unwrap_or_else(|| panic!("the container does not set {secret}"));
        assert!(
            !entry["valueFrom"]["secretKeyRef"].is_null(),
            "{secret} must come from a Secret"
        );
    }
    let file_settings: toml::Table = toml_text.parse().expect("the ConfigMap's TOML parses");
    let secret_keys = secret_like_keys(&file_settings, "");
    assert!(
        secret_keys.is_empty(),
        "secrets belong in the Secret, not the ConfigMap: {secret_keys:?}"
    );

    // A transactional id per pod, stable across its restarts: derived from the pod name.
    let tx = env_entries
        .iter()
        .find(|e| e["name"] == "PROMO__KAFKA__TRANSACTIONAL_ID")
        .expect("PROMO__KAFKA__TRANSACTIONAL_ID is set");
    let pod_name_vars: Vec<String> = env_entries
        .iter()
        .filter(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
        .map(|e| text_at(e, &["name"]))
        .collect();
    let from_pod_name = tx["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        || tx["value"]
            .as_str()
            .is_some_and(|v| pod_name_vars.iter().any(|n| v.contains(&format!("$({n})"))));
    assert!(
        from_pod_name,
        "the transactional id must derive from the pod name"
    );
    let tx_id = setting_str(&settings, "kafka", "transactional_id");
    assert!(
        tx_id.contains("promo-attribution-0"),
        "resolved transactional id {tx_id}"
    );

    // Probes on the admin port; a grace period longer than the drain.
    let admin = seq(container, &["ports"])
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
        .unwrap_or_else(|| panic!("no container port {port} (admin.listen)"));
    let admin_name = admin["name"].as_str().unwrap_or_default().to_owned();
    for (probe, endpoint) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(container, &[probe, "httpGet"]);
        assert_eq!(get["path"].as_str(), Some(endpoint), "{probe} path");
        let probe_port = match &get["port"] {
            Yaml::Number(n) => n.to_string(),
            Yaml::String(s) => s.clone(),
            other => panic!("{probe} port {other:?}"),
        };
        assert!(
            probe_port == port.to_string() || probe_port == admin_name,
            "{probe} must use the admin port, not {probe_port}"
        );
    }
    let grace = at(pod, &["spec", "terminationGracePeriodSeconds"])
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    let deadline = setting_int(&settings, "worker", "shutdown_deadline_secs");
    assert!(
        grace > deadline,
        "terminationGracePeriodSeconds {grace} must exceed worker.shutdown_deadline_secs {deadline}"
    );
    assert_eq!(
        at(pod, &["spec", "securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );

    // Scraped: by annotations, and by a PodMonitor selecting these pods on the admin port.
    let annotations = at(pod, &["metadata", "annotations"]);
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let monitor = manifests.only("PodMonitor");
    for (k, v) in at(monitor, &["spec", "selector", "matchLabels"])
        .as_mapping()
        .expect("PodMonitor selector")
    {
        assert_eq!(
            &pod_labels[k.as_str().expect("label")],
            v,
            "PodMonitor selects the pods"
        );
    }
    let endpoint = &seq(monitor, &["spec", "podMetricsEndpoints"])[0];
    assert_eq!(endpoint["port"].as_str(), Some(admin_name.as_str()));
    let job_label = text_at(monitor, &["spec", "jobLabel"]);
    assert_eq!(
        pod_labels[job_label.as_str()].as_str(),
        Some("promo-attribution"),
        "the PodMonitor's jobLabel gives job=promo-attribution, which the rules select"
    );

    // The PrometheusRule carries exactly deploy/prometheus/rules.yml.
    let rule = manifests.only("PrometheusRule");
    assert_eq!(
        at(rule, &["spec"]),
        &yaml("deploy/prometheus/rules.yml"),
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/rules.yml; regenerate it (see its header)"
    );

    // KEDA: scales this StatefulSet on the group's lag, never past the input's partitions.
    let scaled = manifests.only("ScaledObject");
    let target = at(scaled, &["spec", "scaleTargetRef"]);
    assert_eq!(target["kind"].as_str(), Some("StatefulSet"));
    assert_eq!(target["name"].as_str(), Some(set_name.as_str()));
    let trigger = seq(scaled, &["spec", "triggers"])
        .iter()
        .find(|t| t["type"] == "kafka")
        .expect("a kafka trigger");
    let meta = &trigger["metadata"];
    let group = setting_str(&settings, "kafka", "group_id");
    let input = setting_str(&settings, "kafka", "input_topic");
    assert_eq!(meta["consumerGroup"].as_str(), Some(group.as_str()));
    assert_eq!(meta["topic"].as_str(), Some(input.as_str()));
    let servers_env = text_at(meta, &["bootstrapServersFromEnv"]);
    assert!(
        env.iter().any(|(n, _)| *n == servers_env),
        "bootstrapServersFromEnv names {servers_env}, which the container does not set"
    );
    let auth = manifests.find(
        "TriggerAuthentication",
        &text_at(trigger, &["authenticationRef", "name"]),
    );
    for param in seq(auth, &["spec", "secretTargetRef"]) {
        let secret = manifests.find("Secret", &text_at(param, &["name"]));
        let key = text_at(param, &["key"]);
        assert!(
            secret["stringData"][key.as_str()].is_string(),
            "Secret key {key}"
        );
    }
    let max = at(scaled, &["spec", "maxReplicaCount"])
        .as_u64()
        .expect("maxReplicaCount");
    let min = at(scaled, &["spec", "minReplicaCount"])
        .as_u64()
        .unwrap_or(0);
    let partitions = input_partitions(&manifests, &input);
    assert!(
        (1..=partitions).contains(&max) && min <= max,
        "replicas {min}..={max} must stay within the {partitions} partitions of {input}"
    );
}

fn is_secret_key(key: &str) -> bool {
    key == "redis_url"
        || key == "customer_hmac_key"
        || ["password", "secret", "token"]
            .iter()
            .any(|s| key.contains(s))
        || key.ends_with(".key")
}

/// Keys of a settings table that hold secrets: passwords, keys, and the Redis URL (which
/// carries the Redis password).
fn secret_like_keys(table: &toml::Table, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => found.extend(secret_like_keys(inner, &format!("{path}."))),
            _ if is_secret_key(key) => found.push(path),
            _ => {}
        }
    }
    found
}

/// The partition count the topics Job gives the input topic.
fn input_partitions(manifests: &Manifests, topic: &str) -> u64 {
    let job = manifests.only("Job");
    let script = serde_norway::to_string(at(job, &["spec", "template", "spec", "containers"]))
        .expect("job containers");
    let words: Vec<&str> = script.split_whitespace().collect();
    let at_topic = words
        .windows(2)
        .position(|w| w[0] == "--topic" && w[1] == topic)
        .unwrap_or_else(|| panic!("the topics Job does not create {topic}"));
    words[at_topic..]
        .windows(2)
        .find(|w| w[0] == "--partitions")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no --partitions for {topic} in the topics Job"))
}

// ---------------------------------------------------------------------------------------------
// Alert rules and the dashboard

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = scripts_prometheus("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/prometheus promtool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("promtool stdin")
            .write_all(input)
            .expect("write to promtool");
    }
    child.wait_with_output().expect("promtool output")
}

fn assert_promtool(args: &[&str], stdin: Option<&[u8]>) {
    succeeded(
        &format!("promtool {}", args.join(" ")),
        promtool(args, stdin),
    );
}

struct Rule {
    alert: String,
    expr: String,
    runbook: String,
}

fn rules() -> Vec<Rule> {
    let rules = yaml("deploy/prometheus/rules.yml");
    seq(&rules, &["groups"])
        .iter()
        .flat_map(|g| seq(g, &["rules"]).iter())
        .map(|r| Rule {
            alert: text_at(r, &["alert"]),
            expr: text_at(r, &["expr"]),
            runbook: text_at(r, &["annotations", "runbook_url"]),
        })
        .collect()
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_each_has_a_runbook_and_a_unit_test() {
    assert_promtool(&["check", "rules", "deploy/prometheus/rules.yml"], None);
    assert_promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    );
    assert_promtool(&["test", "rules", "deploy/prometheus/rules_test.yml"], None);

    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for wanted in [
        "PromoWorkerDown",
        "PromoConsumerLagGrowing",
        "PromoCodeTableStale",
        "PromoDeadLetterRateHigh",
        "PromoTransactionAborts",
        "PromoRedisDown",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }

    let docs = read_text("docs/operations.md");
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let tests = yaml("deploy/prometheus/rules_test.yml");
    let fired: BTreeSet<String> = seq(&tests, &["tests"])
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .filter(|case| {
            case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
        })
        .map(|case| text_at(case, &["alertname"]))
        .collect();
    for rule in &rules {
        let target = rule
            .runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| {
                panic!(
                    "{}: runbook_url {} is not in docs/operations.md",
                    rule.alert, rule.runbook
                )
            });
        assert!(
            anchors.contains(target),
            "{}: docs/operations.md has no heading with anchor #{target}",
            rule.alert
        );
        assert!(
            fired.contains(&rule.alert),
            "{}: rules_test.yml never expects it to fire",
            rule.alert
        );
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read_text(
        "deploy/grafana/dashboards/promo-attribution.json",
    ))
    .expect("the dashboard is valid JSON")
}

/// Every PromQL expression of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("panel title").to_owned();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: panels use the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr").to_owned();
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// Grafana's built-in variables, replaced as Grafana would for a short time range.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
}

/// The metric names an expression reads: ours all start with `promo_`, plus Prometheus' `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let names = regex::Regex::new(r"\bpromo_[a-z0-9_]+\b").expect("regex");
    let mut found: BTreeSet<String> = names
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect();
    if regex::Regex::new(r"\bup\s*\{")
        .expect("regex")
        .is_match(expr)
    {
        found.insert("up".into());
    }
    found
}

#[test]
fn dashboard_covers_what_operators_need() {
    let queries = dashboard_queries();
    let all: String = queries
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (need, metric) in [
        ("throughput", "promo_orders_consumed_total"),
        (
            "conversions by status and reason",
            "promo_conversions_total",
        ),
        ("alerts by kind", "promo_alerts_total"),
        ("lag", "promo_consumer_lag"),
        (
            "end-to-end latency percentiles",
            "promo_end_to_end_latency_seconds_bucket",
        ),
        (
            "commit latency percentiles",
            "promo_commit_latency_seconds_bucket",
        ),
        ("transaction aborts", "promo_transactions_total"),
        ("code table age", "promo_code_table_age_seconds"),
        ("DLQ rate", "promo_dlq_records_total"),
    ] {
        assert!(
            all.contains(metric),
            "no dashboard panel for {need} ({metric})"
        );
    }
    for (by, metric) in [
        ("status", "promo_conversions_total"),
        ("reason", "promo_conversions_total"),
        ("kind", "promo_alerts_total"),
        ("outcome", "promo_transactions_total"),
    ] {
        assert!(
            queries.iter().any(|(_, e)| {
                e.contains(metric)
                    && (e.contains(&format!("by ({by}")) || e.contains(&format!(", {by})")))
            }),
            "no panel splits {metric} by {by}"
        );
    }
    assert!(
        all.contains("histogram_quantile(0.99"),
        "latency percentiles up to p99"
    );
}

// ---------------------------------------------------------------------------------------------
// A live worker, promtool check metrics, and a real Prometheus

/// A minimal HTTP/1.0 GET: status and body.
fn http_get(addr: &str, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The worker's admin address, from its JSON log line announcing the admin endpoints.
fn admin_addr(worker: &ChildWorker) -> Option<String> {
    let log = std::fs::read_to_string(&worker.log).ok()?;
    log.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin endpoints"))
        })
        .and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned))
}

fn metrics_text(admin: &str) -> String {
    let (status, body) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics");
    body
}

/// Whether the exposition declares the metric `name` (a histogram's series by their suffixes).
fn exported(metrics: &str, name: &str) -> bool {
    let declared = |n: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {n} ")))
    };
    declared(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("# TYPE {base} histogram")))
            })
        })
}

/// A Prometheus started by `scripts/prometheus start`, stopped when dropped.
struct Prometheus {
    url_host: String,
    data: tempfile::TempDir,
}

impl Prometheus {
    fn start(scrape_target: &str) -> Prometheus {
        let data = tempfile::tempdir().expect("prometheus temp dir");
        let config = data.path().join("prometheus.yml");
        // One-second scrapes and evaluations so rates and rules have data within seconds; the
        // rules file is the repository's own.
        let rules = path("deploy/prometheus/rules.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: promo-attribution\n    static_configs:\n      - targets: [\"{scrape_target}\"]\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let url = succeeded(
            "scripts/prometheus start",
            scripts_prometheus("start")
                .arg(&config)
                .arg(data.path().join("server"))
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/prometheus start"),
        );
        let url_host = url
            .trim()
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("scripts/prometheus start printed {url:?}"))
            .to_owned();
        Prometheus { url_host, data }
    }

    fn api(&self, target: &str) -> Json {
        let (status, body) = http_get(&self.url_host, target)
            .unwrap_or_else(|e| panic!("GET {target} from prometheus: {e}"));
        let json: Json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {target} ({status}) not JSON ({e}): {body}"));
        assert_eq!(
            json["status"], "success",
            "prometheus {target} ({status}): {body}"
        );
        json
    }

    /// The instant-query result vector (or scalar, as one element).
    fn query(&self, promql: &str) -> Vec<Json> {
        let json = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        match &json["data"]["result"] {
            Json::Array(items) => items.clone(),
            Json::Null => Vec::new(),
            scalar => vec![scalar.clone()],
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server/prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let stopped = scripts_prometheus("stop")
            .arg(self.data.path().join("server"))
            .stdin(Stdio::null())
            .output();
        if let Err(e) = stopped {
            eprintln!("scripts/prometheus stop failed: {e}");
        }
    }
}

#[test]
fn live_worker_feeds_promtool_prometheus_the_dashboard_and_the_rules() {
    let t0 = Instant::now();
    let names = Names::new("deploy");
    names.create_topics(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");

    // The compose pipeline without Docker: the code loader's own command publishes the sample
    // table to the test Redis (under a key prefix of its own), and the worker runs the compose
    // worker's settings with only its addresses, topics and group replaced.
    let prefix = support::unique_prefix("deploy-live");
    let mut loader = compose_loader_command();
    loader.extend(["--prefix".to_owned(), prefix.clone()]);
    succeeded(
        "the compose code loader",
        worker_binary()
            .args(&loader)
            .env("PROMO__STORE__REDIS_URL", support::redis_url())
            .stdin(Stdio::null())
            .output()
            .expect("run the loader's command"),
    );
    let mut sets = compose_worker_sets();
    sets.extend([
        format!("store.redis_url={}", support::redis_url()),
        format!("store.key_prefix={prefix}"),
        // The admin address is read back from the JSON log.
        "worker.log_format=json".to_owned(),
    ]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut worker = ChildWorker::spawn(&names, &names.transactional_id, &sets, &log);

    let mut admin = None;
    assert!(
        wait_until(STARTUP_DEADLINE, || {
            admin = admin_addr(&worker);
            admin.is_some() || worker.exited().is_some()
        }) && admin.is_some(),
        "the worker's admin address within {STARTUP_DEADLINE:?}; log:\n{}",
        worker.log_tail()
    );
    let admin = admin.expect("admin address");

    // The sample orders, one of them malformed: conversions, alerts and a dead letter, so every
    // labelled counter has samples.
    let records: Vec<Vec<u8>> = read_text("samples/orders.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let produced = tools::produce_records(brokers(), &names.input, &records).expect("produce");
    assert_eq!(produced, records.len());
    let consumed = |metrics: &str| support::metric(metrics, "promo_orders_consumed_total");
    assert!(
        wait_until(DATA_DEADLINE, || {
            let metrics = http_get(&admin, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            consumed(&metrics) >= Some(records.len() as f64)
                && metrics.contains("promo_dlq_records_total{")
                && metrics.contains("promo_alerts_total{")
                && metrics.contains("promo_consumer_lag{")
        }),
        "the worker processed the {} sample orders within {DATA_DEADLINE:?}; log:\n{}",
        records.len(),
        worker.log_tail()
    );

    let metrics = metrics_text(&admin);
    assert_promtool(&["check", "metrics"], Some(metrics.as_bytes()));
    assert_eq!(
        support::metric(&metrics, "promo_redis_up"),
        Some(1.0),
        "the worker reads its table from Redis, as in compose"
    );
    // What the compose health check and the Kubernetes probes ask.
    for endpoint in ["/healthz", "/readyz"] {
        let (status, body) = http_get(&admin, endpoint).expect("GET a health endpoint");
        assert_eq!(status, 200, "{endpoint}: {body}");
    }

    let prometheus = Prometheus::start(&admin);
    assert!(
        wait_until(DATA_DEADLINE, || {
            prometheus.query("up{job=\"promo-attribution\"} == 1").len() == 1
        }),
        "prometheus scrapes the worker within {DATA_DEADLINE:?}; prometheus log:\n{}",
        prometheus.log()
    );

    // Every dashboard query returns data. Rates need two scrapes after the counters moved, so
    // poll rather than ask once.
    let queries = dashboard_queries();
    let mut without_data: Vec<(String, String)> = queries.clone();
    wait_until(DATA_DEADLINE, || {
        without_data.retain(|(_, expr)| prometheus.query(&grafana_to_promql(expr)).is_empty());
        without_data.is_empty()
    });
    // A query may lack data only where the local broker cannot produce it; even then every
    // metric it reads must be one the worker exports, so no panel sits on a name that does not
    // exist.
    let metrics = metrics_text(&admin);
    for (title, expr) in &without_data {
        eprintln!("note: dashboard panel {title:?} has no data here: {expr}");
        for name in metric_names(expr) {
            assert!(
                name == "up" || exported(&metrics, &name),
                "dashboard panel {title:?} reads {name}, which the worker does not export"
            );
        }
    }
    let all_names: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for name in &all_names {
        assert!(
            name == "up" || exported(&metrics, name),
            "the dashboard reads {name}, which the worker does not export"
        );
    }

    // Every metric an alert rule reads exists as a series in Prometheus.
    for rule in rules() {
        for name in metric_names(&rule.expr) {
            assert!(
                !prometheus.query(&name).is_empty(),
                "{}: prometheus has no series {name}",
                rule.alert
            );
        }
    }
    // The rules load and evaluate without error against the real series.
    let mut unhealthy = Vec::new();
    let evaluated = wait_until(DATA_DEADLINE, || {
        let rules = prometheus.api("/api/v1/rules");
        let all: Vec<Json> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        unhealthy = all
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        all.len() == self::rules().len() && unhealthy.is_empty()
    });
    assert!(
        evaluated,
        "alert rules not all evaluated cleanly: {unhealthy:?}"
    );
    drop(prometheus);

    let exit = worker.terminate(STOP_DEADLINE);
    assert!(
        exit.is_some_and(|s| s.success()),
        "the worker drains and exits 0 on SIGTERM, got {exit:?}; log:\n{}",
        worker.log_tail()
    );
    eprintln!(
        "live check: {} dashboard queries ({} with data), {} rules, in {:?}",
        queries.len(),
        queries.len() - without_data.len(),
        self::rules().len(),
        t0.elapsed()
    );
}
