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

/// Grafana's built-in variables, replaced as Grafana would for a short time range.
pub(super) fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
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
