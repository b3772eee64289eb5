//! The Grafana dashboard (`deploy/grafana/dashboards/promo-attribution.json`): its queries and
//! the metrics they read.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::helpers::read_text;

// ---------------------------------------------------------------------------------------------
// The dashboard

pub(super) fn dashboard() -> Json {
    serde_json::from_str(&read_text(
        "deploy/grafana/dashboards/promo-attribution.json",
    ))
    .expect("the dashboard is valid JSON")
}

/// Every PromQL expression of the dashboard, with its panel's title.
pub(super) fn dashboard_queries() -> Vec<(String, String)> {
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

/// Grafana's built-in variables, replaced as Grafana would for a short time range, and the
/// dashboard's own as "All" would (the job by the one the rules select on).
pub(super) fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$job", "promo-attribution")
        .replace("$namespace", ".*")
        .replace("$instance", ".*")
}

/// The dashboard's scoping variables; every selector of every query uses all three, so two
/// environments (or two jobs) in one Prometheus are never summed together.
const SCOPES: [&str; 3] = ["job", "namespace", "instance"];

#[test]
fn every_query_is_scoped_by_job_namespace_and_instance() {
    let dashboard = dashboard();
    let variables: Vec<&Json> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .collect();
    for scope in SCOPES {
        let variable = variables
            .iter()
            .find(|v| v["name"] == scope)
            .unwrap_or_else(|| panic!("no ${scope} variable"));
        assert_eq!(variable["type"], "query", "${scope}");
        assert_eq!(variable["includeAll"], true, "${scope} offers All");
        let query = variable["definition"].as_str().expect("definition");
        assert!(
            query.starts_with("label_values(promo_build_info"),
            "${scope} lists the values our workers have: {query}"
        );
    }
    // Every metric selector: the name, then its matchers.
    let selector = regex::Regex::new(r"\b(promo_[a-z0-9_]+|up)\b(\{[^}]*\})?").expect("regex");
    for (title, expr) in dashboard_queries() {
        for found in selector.captures_iter(&expr) {
            let matchers = found.get(2).map_or("", |m| m.as_str());
            for scope in SCOPES {
                assert!(
                    matchers.contains(&format!(r#"{scope}=~"${scope}""#)),
                    "{title}: {} is not scoped by ${scope}: {expr}",
                    &found[1]
                );
            }
        }
    }
}

/// The metric names an expression reads: ours all start with `promo_`, plus Prometheus' `up`.
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
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
        ("lag", "promo_consumer_lag_records"),
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
