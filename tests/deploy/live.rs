//! Live, the compose pipeline minus Docker: the code loader's command publishes the samples to
//! Redis, a worker with the compose worker's settings (addresses replaced) decides the sample
//! orders, its `/metrics` passes `promtool check metrics`, and a real Prometheus scraping it
//! answers every dashboard query and every metric of the alert rules with data, and evaluates
//! the rules without errors; every shipped alert stays silent on the worker's own series
//! (`promtool test rules`). All of it twice: with the table from Redis, and from the sample
//! files (`run --codes`), where the Redis-only metrics must be absent.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use promo_attribution::kafka::tools;
use promo_attribution::settings::CodeSource;
use serde_json::Value as Json;

use super::compose::{compose_loader_command, compose_worker_sets};
use super::dashboard::{dashboard_queries, grafana_to_promql, metric_names};
use super::helpers::{path, read_text, scripts_prometheus, succeeded, worker_binary};
use super::prometheus_rules::{assert_promtool, rules};
use super::quiet_rules::assert_rules_silent;
use crate::support::{self, ChildWorker, Names, brokers, wait_until};

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const DATA_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

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
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin endpoints"))
        })
        .and_then(|l| l["addr"].as_str().map(str::to_owned))
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

/// Exported only where Redis is the code source.
const REDIS_ONLY: [&str; 3] = [
    "promo_redis_up",
    "promo_code_table_age_seconds",
    "promo_code_table_propagation_seconds",
];

fn redis_only(name: &str) -> bool {
    REDIS_ONLY
        .iter()
        .any(|only| name == *only || name.strip_prefix(only).is_some_and(|s| s.starts_with('_')))
}

#[test]
fn live_worker_with_redis_codes_feeds_promtool_prometheus_the_dashboard_and_the_rules() {
    live_check(CodeSource::Redis);
}

#[test]
fn live_worker_with_file_codes_feeds_promtool_prometheus_the_dashboard_and_the_rules() {
    live_check(CodeSource::Files);
}

fn live_check(source: CodeSource) {
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
    if source == CodeSource::Files {
        sets.extend([
            "codes.source=files".to_owned(),
            format!("codes.codes_file={}", path("samples/codes.csv").display()),
            format!(
                "codes.partners_file={}",
                path("samples/partners.csv").display()
            ),
        ]);
    }
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
                && metrics.contains("promo_consumer_lag_records{")
        }),
        "the worker processed the {} sample orders within {DATA_DEADLINE:?}; log:\n{}",
        records.len(),
        worker.log_tail()
    );

    let metrics = metrics_text(&admin);
    assert_promtool(&["check", "metrics"], Some(metrics.as_bytes()));
    match source {
        CodeSource::Redis => assert_eq!(
            support::metric(&metrics, "promo_redis_up"),
            Some(1.0),
            "the worker reads its table from Redis, as in compose"
        ),
        CodeSource::Files => {
            for name in REDIS_ONLY {
                assert!(!exported(&metrics, name), "{name} exported in file mode");
            }
            assert!(
                support::metric(&metrics, "promo_code_table_loaded_timestamp_seconds")
                    .is_some_and(|t| t > 1.7e9),
                "a file table's load time:\n{metrics}"
            );
        }
    }
    assert!(
        metrics.contains("promo_build_info{") && metrics.contains("\nprocess_start_time_seconds "),
        "build info and process metrics:\n{metrics}"
    );
    // The JSON log lines carry the service and its version at top level.
    let log = std::fs::read_to_string(&worker.log).expect("worker log");
    let first: Json = serde_json::from_str(log.lines().next().expect("a log line")).expect("JSON");
    assert_eq!(first["service"], "promo-attribution", "{first}");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"), "{first}");
    assert!(!log.contains('\x1b'), "colour codes in the log");
    // Every shipped alert stays silent on this healthy worker's series.
    assert_rules_silent(&metrics);
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
    // Panels on Redis-only metrics stay empty for a file-sourced worker: not waited for.
    let mut without_data: Vec<(String, String)> = queries
        .iter()
        .filter(|(_, expr)| {
            source == CodeSource::Redis || !metric_names(expr).iter().any(|n| redis_only(n))
        })
        .cloned()
        .collect();
    let redis_only_panels = queries.len() - without_data.len();
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
                name == "up"
                    || exported(&metrics, &name)
                    || source == CodeSource::Files && redis_only(&name),
                "dashboard panel {title:?} reads {name}, which the worker does not export"
            );
        }
    }
    let all_names: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for name in &all_names {
        assert!(
            name == "up"
                || exported(&metrics, name)
                || source == CodeSource::Files && redis_only(name),
            "the dashboard reads {name}, which the worker does not export"
        );
    }

    // Every metric an alert rule reads exists as a series in Prometheus.
    for rule in rules() {
        for name in metric_names(&rule.expr) {
            if source == CodeSource::Files && redis_only(&name) {
                continue;
            }
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
        "live check ({source:?}): {} dashboard queries ({} with data, {redis_only_panels} on Redis-only metrics), {} rules, in {:?}",
        queries.len(),
        queries.len() - without_data.len() - redis_only_panels,
        self::rules().len(),
        t0.elapsed()
    );
}
