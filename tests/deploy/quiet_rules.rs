//! The shipped alert rules against a live worker's own series: `promtool test rules` over the
//! samples of one `/metrics` scrape, held for half an hour (longer than any rule's `for:`), with
//! every alert expected silent. A healthy worker must not page anyone, whatever its code source.

use std::fmt::Write as _;

use super::helpers::path;
use super::prometheus_rules::{assert_promtool, rules};

/// The job the rules select on, and an instance name for the series.
const JOB: &str = "promo-attribution";
const INSTANCE: &str = "live:9464";
/// Minutes of series, and the evaluation times (minutes) at which every alert must be silent.
const MINUTES: u32 = 30;
const EVAL_AT: [u32; 3] = [5, 15, 30];

/// One exposition sample as a promtool input series: `name{labels,job,instance}`, and its value
/// in promtool's number syntax.
fn input_series(sample: &str) -> Option<(String, String)> {
    let (series, value) = sample.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let extra = format!(r#"job="{JOB}",instance="{INSTANCE}""#);
    let series = match series.strip_suffix('}') {
        Some(labelled) if labelled.ends_with('{') => format!("{labelled}{extra}}}"),
        Some(labelled) => format!("{labelled},{extra}}}"),
        None => format!("{series}{{{extra}}}"),
    };
    // Rust prints f64 without an exponent, which promtool's series syntax would misread.
    Some((series, format!("{value}")))
}

/// YAML single-quoted scalar.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The `promtool test rules` file for `metrics`, every alert expected silent.
pub(super) fn silent_rules_test(metrics: &str) -> String {
    let mut yaml = String::new();
    let rules_file = path("deploy/prometheus/rules.yml");
    writeln!(
        yaml,
        "rule_files:\n  - {}",
        quoted(&rules_file.display().to_string())
    )
    .ok();
    writeln!(
        yaml,
        "evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:"
    )
    .ok();
    // The scrape itself succeeded: `up` is 1 (it gains job and instance below).
    let samples = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .chain(["up 1"]);
    for (series, value) in samples.filter_map(input_series) {
        writeln!(
            yaml,
            "      - series: {}\n        values: {}",
            quoted(&series),
            quoted(&format!("{value}x{MINUTES}"))
        )
        .ok();
    }
    writeln!(yaml, "    alert_rule_test:").ok();
    for rule in rules() {
        for minute in EVAL_AT {
            writeln!(
                yaml,
                "      - eval_time: {minute}m\n        alertname: {}\n        exp_alerts: []",
                rule.alert
            )
            .ok();
        }
    }
    yaml
}

/// `promtool test rules` passes: no shipped alert fires on these series.
pub(super) fn assert_rules_silent(metrics: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("live_rules_test.yml");
    std::fs::write(&file, silent_rules_test(metrics)).expect("write the rules test");
    assert_promtool(&["test", "rules", &file.display().to_string()], None);
}

#[test]
fn series_keep_their_labels_and_gain_job_and_instance() {
    assert_eq!(
        input_series("promo_redis_up 0"),
        Some((
            r#"promo_redis_up{job="promo-attribution",instance="live:9464"}"#.into(),
            "0".into()
        ))
    );
    assert_eq!(
        input_series(r#"promo_consumer_lag_records{partition="0",topic="o"} -1"#),
        Some((
            r#"promo_consumer_lag_records{partition="0",topic="o",job="promo-attribution",instance="live:9464"}"#.into(),
            "-1".into()
        ))
    );
    assert_eq!(
        input_series("process_start_time_seconds 1.7e9").map(|(_, v)| v),
        Some("1700000000".into())
    );
}

/// The check can fail: the series of a worker whose Redis is down make PromoRedisDown fire, so
/// promtool rejects the "all silent" expectation.
#[test]
fn an_unhealthy_worker_fails_the_silence_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("unhealthy.yml");
    std::fs::write(&file, silent_rules_test("promo_redis_up 0\n")).expect("write");
    let out = super::helpers::scripts_prometheus("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(!out.status.success(), "promtool accepted a firing alert");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("PromoRedisDown"), "{said}");
}
