//! The metrics' names, labels and rendering.

use super::*;

fn metrics() -> Metrics {
    Metrics::new().expect("metrics register")
}

/// The sample lines (not `# HELP`/`# TYPE`) of the rendered output.
fn samples(m: &Metrics) -> Vec<String> {
    m.render()
        .expect("render")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn has_sample(m: &Metrics, line: &str) -> bool {
    samples(m).iter().any(|l| l == line)
}

#[test]
fn many_instances_do_not_clash() {
    let a = metrics();
    let b = metrics();
    a.inc_orders_consumed(3);
    assert!(has_sample(&a, "promo_orders_consumed_total 3"));
    assert!(has_sample(&b, "promo_orders_consumed_total 0"));
}

#[test]
fn detector_steps_are_timed_and_failures_counted() {
    let m = metrics();
    m.observe_detector_step(Duration::from_millis(3), false);
    m.observe_detector_step(Duration::from_millis(20), true);
    assert!(has_sample(&m, "promo_detector_step_seconds_count 2"));
    assert!(has_sample(&m, "promo_detector_step_failures_total 1"));
}

#[test]
fn every_metric_is_rendered_after_a_record_call() {
    let m = metrics();
    m.inc_orders_consumed(2);
    m.record_conversion(Status::Credited, Some(Basis::CodeAlways), None);
    m.record_alert(AlertKind::ExpiredCodeUsed);
    m.record_dlq("bad_json");
    m.observe_batch_size(42);
    m.observe_commit_latency(Duration::from_millis(7));
    m.observe_end_to_end(1.5);
    m.set_lag("orders", 3, 17);
    m.record_transaction(TxOutcome::Committed);
    m.set_code_table("v1", 1234);
    m.set_code_table_age_source(Box::new(|| 9.5));
    m.set_redis_up(true);
    m.set_assigned_partitions(4);
    m.set_paused(true);

    let text = m.render().expect("render");
    for name in [
        "promo_orders_consumed_total",
        "promo_conversions_total",
        "promo_alerts_total",
        "promo_dlq_records_total",
        "promo_batch_size",
        "promo_commit_latency_seconds",
        "promo_end_to_end_latency_seconds",
        "promo_consumer_lag",
        "promo_transactions_total",
        "promo_code_table_info",
        "promo_code_table_entries",
        "promo_code_table_age_seconds",
        "promo_redis_up",
        "promo_assigned_partitions",
        "promo_worker_paused",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }

    for line in [
        "promo_orders_consumed_total 2",
        r#"promo_conversions_total{basis="CODE_ALWAYS",reason="",status="CREDITED"} 1"#,
        r#"promo_alerts_total{kind="EXPIRED_CODE_USED"} 1"#,
        r#"promo_dlq_records_total{reason="bad_json"} 1"#,
        "promo_batch_size_count 1",
        "promo_batch_size_sum 42",
        r#"promo_batch_size_bucket{le="50"} 1"#,
        r#"promo_batch_size_bucket{le="20"} 0"#,
        "promo_commit_latency_seconds_count 1",
        r#"promo_commit_latency_seconds_bucket{le="0.01"} 1"#,
        r#"promo_commit_latency_seconds_bucket{le="0.005"} 0"#,
        "promo_end_to_end_latency_seconds_count 1",
        "promo_end_to_end_latency_seconds_sum 1.5",
        r#"promo_end_to_end_latency_seconds_bucket{le="3600"} 1"#,
        r#"promo_consumer_lag{partition="3",topic="orders"} 17"#,
        r#"promo_transactions_total{outcome="committed"} 1"#,
        r#"promo_transactions_total{outcome="aborted"} 0"#,
        r#"promo_code_table_info{version="v1"} 1"#,
        "promo_code_table_entries 1234",
        "promo_code_table_age_seconds 9.5",
        "promo_redis_up 1",
        "promo_assigned_partitions 4",
        "promo_worker_paused 1",
    ] {
        assert!(has_sample(&m, line), "{line} missing from:\n{text}");
    }
}

#[test]
fn conversion_labels_use_output_spellings_and_empty_when_absent() {
    let m = metrics();
    m.record_conversion(
        Status::Invalid,
        None,
        Some(InvalidReason::CodeOwnedByOtherPartner),
    );
    m.record_conversion(Status::Unattributed, None, None);
    m.record_conversion(Status::Unattributed, None, None);
    m.record_conversion(Status::Credited, Some(Basis::Click), None);
    assert!(has_sample(
        &m,
        r#"promo_conversions_total{basis="",reason="CODE_OWNED_BY_OTHER_PARTNER",status="INVALID"} 1"#
    ));
    assert!(has_sample(
        &m,
        r#"promo_conversions_total{basis="",reason="",status="UNATTRIBUTED"} 2"#
    ));
    assert!(has_sample(
        &m,
        r#"promo_conversions_total{basis="CLICK",reason="",status="CREDITED"} 1"#
    ));
}

#[test]
fn labels_match_serde_spellings() {
    fn serde_name<T: serde::Serialize>(v: T) -> String {
        serde_json::to_string(&v)
            .expect("serialize")
            .trim_matches('"')
            .to_owned()
    }
    for s in [Status::Credited, Status::Invalid, Status::Unattributed] {
        assert_eq!(status_label(s), serde_name(s));
    }
    for b in [
        Basis::CodeAlways,
        Basis::CodeInvolved,
        Basis::CodeWinner,
        Basis::Click,
    ] {
        assert_eq!(basis_label(b), serde_name(b));
    }
}

#[test]
fn code_table_info_keeps_only_the_current_version() {
    let m = metrics();
    m.set_code_table("2024-01-01T00:00:00Z#a", 10);
    m.set_code_table("2024-01-02T00:00:00Z#b", 12);
    // Same version again must not remove itself.
    m.set_code_table("2024-01-02T00:00:00Z#b", 12);
    let info: Vec<String> = samples(&m)
        .into_iter()
        .filter(|l| l.starts_with("promo_code_table_info"))
        .collect();
    assert_eq!(
        info,
        vec![r#"promo_code_table_info{version="2024-01-02T00:00:00Z#b"} 1"#.to_owned()]
    );
    assert!(has_sample(&m, "promo_code_table_entries 12"));
}

#[test]
fn negative_and_nan_end_to_end_latency_is_ignored() {
    let m = metrics();
    m.observe_end_to_end(-3.0);
    m.observe_end_to_end(f64::NAN);
    assert!(has_sample(&m, "promo_end_to_end_latency_seconds_count 0"));
    m.observe_end_to_end(0.0);
    assert!(has_sample(&m, "promo_end_to_end_latency_seconds_count 1"));
    assert!(has_sample(&m, "promo_end_to_end_latency_seconds_sum 0"));
}

#[test]
fn cleared_lag_disappears_and_others_stay() {
    let m = metrics();
    m.set_lag("orders", 0, 5);
    m.set_lag("orders", 1, 6);
    m.clear_lag("orders", 0);
    // Clearing an unknown partition is a no-op.
    m.clear_lag("orders", 9);
    let lag: Vec<String> = samples(&m)
        .into_iter()
        .filter(|l| l.starts_with("promo_consumer_lag"))
        .collect();
    assert_eq!(
        lag,
        vec![r#"promo_consumer_lag{partition="1",topic="orders"} 6"#.to_owned()]
    );
}

#[test]
fn gauges_go_back_down() {
    let m = metrics();
    m.set_paused(true);
    m.set_paused(false);
    m.set_redis_up(false);
    m.set_assigned_partitions(0);
    assert!(has_sample(&m, "promo_worker_paused 0"));
    assert!(has_sample(&m, "promo_redis_up 0"));
    assert!(has_sample(&m, "promo_assigned_partitions 0"));
}

#[test]
fn worker_state_is_one_hot_from_the_start() {
    let m = metrics();
    assert!(has_sample(&m, r#"promo_worker_state{state="starting"} 1"#));
    assert!(has_sample(&m, r#"promo_worker_state{state="idle"} 0"#));
    m.set_worker_state(WorkerState::Retrying);
    let states: Vec<String> = samples(&m)
        .into_iter()
        .filter(|l| l.starts_with("promo_worker_state") && l.ends_with(" 1"))
        .collect();
    assert_eq!(
        states,
        vec![r#"promo_worker_state{state="retrying"} 1"#.to_owned()]
    );
}
