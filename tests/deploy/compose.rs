//! `docker-compose.yml`: against the Compose specification's types, files that exist, the Kafka
//! settings exactly-once needs on one node, health checks for `up --wait`, and the compose
//! worker's settings as the worker itself reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_norway::Value as Yaml;

use super::dashboard::dashboard;
use super::dockerfile::image_copies;
use super::helpers::{
    admin_port, at, compose_env, compose_seconds, effective_settings, map_keys, path, read_text,
    seq, setting_int, setting_str, yaml,
};

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
pub(super) fn compose_loader_command() -> Vec<String> {
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
pub(super) fn compose_worker_sets() -> Vec<String> {
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
        probe.contains("healthcheck")
            && probe.contains("/readyz")
            && probe.contains(&format!(":{port}")),
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
