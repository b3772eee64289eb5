//! `deploy/k8s/`: probes on the admin port, a grace period above the drain deadline, a
//! transactional id per pod, ConfigMap and Secret references that resolve, scraping, and a KEDA
//! ScaledObject capped at the partition count.

use std::path::{Path, PathBuf};

use serde_norway::Value as Yaml;

use super::helpers::{
    admin_port, at, dummy_secret, effective_settings, path, seq, setting_int, setting_str, text_at,
    yaml, yaml_docs,
};

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

    // Only Prometheus reaches the pods, and only on the admin port (the node's kubelet always
    // may): a policy selecting these pods for ingress whose every rule names its peers.
    let policy = manifests.only("NetworkPolicy");
    assert!(
        seq(kustomization, &["resources"])
            .iter()
            .any(|r| r.as_str() == Some("networkpolicy.yaml")),
        "the kustomization applies the NetworkPolicy"
    );
    for (k, v) in at(policy, &["spec", "podSelector", "matchLabels"])
        .as_mapping()
        .expect("NetworkPolicy podSelector")
    {
        assert_eq!(
            &pod_labels[k.as_str().expect("label")],
            v,
            "the NetworkPolicy selects the pods"
        );
    }
    assert!(
        seq(policy, &["spec", "policyTypes"])
            .iter()
            .any(|t| t.as_str() == Some("Ingress")),
        "the NetworkPolicy restricts ingress"
    );
    let rules = seq(policy, &["spec", "ingress"]);
    assert!(!rules.is_empty(), "Prometheus must be let in");
    for rule in rules {
        let peers = seq(rule, &["from"]);
        assert!(
            !peers.is_empty(),
            "an ingress rule without `from` lets everyone in"
        );
        for peer in peers {
            let pods = &peer["podSelector"]["matchLabels"];
            assert!(
                pods.as_mapping().is_some_and(|m| !m.is_empty()) && peer["ipBlock"].is_null(),
                "each peer is a labelled set of pods (Prometheus), not an address range: {peer:?}"
            );
        }
        let ports = seq(rule, &["ports"]);
        assert!(!ports.is_empty(), "a rule without ports opens every port");
        for p in ports {
            let allowed = match &p["port"] {
                Yaml::Number(n) => n.as_u64() == Some(u64::from(port)),
                Yaml::String(s) => *s == admin_name,
                _ => false,
            };
            assert!(
                allowed,
                "the NetworkPolicy opens {p:?}, not only the admin port"
            );
        }
    }

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
