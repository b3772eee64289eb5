//! The alert rules (`deploy/prometheus/rules.yml`): `promtool check rules` and `promtool test
//! rules`, and a runbook and a unit test for each alert.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Output, Stdio};

use super::helpers::{read_text, scripts_prometheus, seq, succeeded, text_at, yaml};

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

pub(super) fn assert_promtool(args: &[&str], stdin: Option<&[u8]>) {
    succeeded(
        &format!("promtool {}", args.join(" ")),
        promtool(args, stdin),
    );
}

pub(super) struct Rule {
    pub(super) alert: String,
    pub(super) expr: String,
    pub(super) runbook: String,
}

pub(super) fn rules() -> Vec<Rule> {
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
