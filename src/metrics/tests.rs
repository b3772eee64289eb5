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
fn decision_summaries_start_at_zero_and_count_what_is_written() {
    let m = metrics();
    assert!(has_sample(&m, "promo_decision_summaries_stored_total 0"));
    m.add_decision_summaries(3);
    m.add_decision_summaries(0);
    assert!(has_sample(&m, "promo_decision_summaries_stored_total 3"));
}

#[test]
fn detector_steps_are_timed_and_failures_counted() {
    let m = metrics();
    m.observe_detector_step(Duration::from_millis(3), StepResult::Applied);
    m.observe_detector_step(Duration::from_millis(20), StepResult::Failed);
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
        "promo_batch_size_records",
        "promo_commit_latency_seconds",
        "promo_end_to_end_latency_seconds",
        "promo_consumer_lag_records",
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
        "promo_batch_size_records_count 1",
        "promo_batch_size_records_sum 42",
        r#"promo_batch_size_records_bucket{le="50"} 1"#,
        r#"promo_batch_size_records_bucket{le="20"} 0"#,
        "promo_commit_latency_seconds_count 1",
        r#"promo_commit_latency_seconds_bucket{le="0.01"} 1"#,
        r#"promo_commit_latency_seconds_bucket{le="0.005"} 0"#,
        "promo_end_to_end_latency_seconds_count 1",
        "promo_end_to_end_latency_seconds_sum 1.5",
        r#"promo_end_to_end_latency_seconds_bucket{le="3600"} 1"#,
        r#"promo_consumer_lag_records{partition="3",topic="orders"} 17"#,
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

/// The enum values a JSON Schema allows at `pointer` (nulls left out).
fn schema_enum(file: &str, pointer: &str) -> Vec<String> {
    let path = format!("{}/schema/{file}", env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read schema")).expect("json");
    schema
        .pointer(pointer)
        .and_then(|v| v.as_array())
        .unwrap_or_else(|| panic!("{file}{pointer} is not an enum"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn labelled_series_start_at_zero_for_every_value_the_outputs_can_carry() {
    let m = metrics();
    let lines = samples(&m);
    let zero = |line: String| {
        assert!(
            lines.contains(&line),
            "{line} missing at start:\n{}",
            lines.join("\n")
        );
    };
    for basis in schema_enum("conversion.schema.json", "/properties/basis/enum") {
        zero(format!(
            r#"promo_conversions_total{{basis="{basis}",reason="",status="CREDITED"}} 0"#
        ));
    }
    for reason in schema_enum("conversion.schema.json", "/properties/invalid_reason/enum") {
        zero(format!(
            r#"promo_conversions_total{{basis="",reason="{reason}",status="INVALID"}} 0"#
        ));
    }
    zero(r#"promo_conversions_total{basis="",reason="",status="UNATTRIBUTED"} 0"#.to_owned());
    for kind in schema_enum("alert.schema.json", "/properties/kind/enum") {
        zero(format!(r#"promo_alerts_total{{kind="{kind}"}} 0"#));
    }
    for phase in ["held", "deliveries", "offsets", "end"] {
        zero(format!(
            r#"promo_commit_phase_seconds_count{{phase="{phase}"}} 0"#
        ));
    }
    for reason in [
        "malformed_json",
        "schema_violation",
        "empty_record",
        "output_too_large",
    ] {
        zero(format!(r#"promo_dlq_records_total{{reason="{reason}"}} 0"#));
    }
    for outcome in ["loaded", "refused"] {
        zero(format!(
            r#"promo_code_table_reloads_total{{outcome="{outcome}"}} 0"#
        ));
    }
    // Only combinations the outputs can carry: a basis only when credited.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(r#"basis="CLICK",reason="",status="INVALID""#))
    );
}

#[test]
fn an_assigned_partition_has_a_lag_series_before_its_first_statistics() {
    let m = metrics();
    m.set_lag("orders", 1, 9);
    m.init_lag("orders", 0);
    m.init_lag("orders", 1);
    assert!(has_sample(
        &m,
        r#"promo_consumer_lag_records{partition="0",topic="orders"} 0"#
    ));
    // A partition that already reported keeps its value.
    assert!(has_sample(
        &m,
        r#"promo_consumer_lag_records{partition="1",topic="orders"} 9"#
    ));
}

#[test]
fn redis_gauges_exist_only_where_redis_is_the_code_source() {
    let redis = Metrics::for_source(CodeSource::Redis).expect("metrics");
    redis.set_redis_up(true);
    redis.set_code_table_age_source(Box::new(|| 3.0));
    let text = redis.render().expect("render");
    assert!(text.contains("\npromo_redis_up 1\n"), "{text}");
    assert!(
        text.contains("\npromo_code_table_age_seconds 3\n"),
        "{text}"
    );
    assert!(!text.contains("promo_code_table_loaded_timestamp_seconds"));

    let files = Metrics::for_source(CodeSource::Files).expect("metrics");
    files.set_redis_up(false);
    files.set_code_table_age_source(Box::new(|| 1e9));
    files.set_code_table_loaded_at(1_700_000_000.0);
    let text = files.render().expect("render");
    for absent in [
        "promo_redis_up",
        "promo_code_table_age_seconds",
        "promo_code_table_propagation_seconds",
    ] {
        assert!(!text.contains(absent), "{absent} in file mode:\n{text}");
    }
    assert!(
        text.contains("\npromo_code_table_loaded_timestamp_seconds 1700000000\n"),
        "{text}"
    );
}

#[test]
fn build_info_and_process_metrics_are_exported() {
    let m = metrics();
    let text = m.render().expect("render");
    let build = format!(
        r#"promo_build_info{{commit="{BUILD_COMMIT}",version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(has_sample(&m, &build), "{build} missing:\n{text}");
    assert!(!BUILD_COMMIT.is_empty());
    #[cfg(target_os = "linux")]
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
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
        .filter(|l| l.starts_with("promo_consumer_lag_records"))
        .collect();
    assert_eq!(
        lag,
        vec![r#"promo_consumer_lag_records{partition="1",topic="orders"} 6"#.to_owned()]
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

/// Every combination the cache holds sits where `conversion_label_sets` put it, so a cached
/// increment moves the series a lookup by label values would have moved.
#[test]
fn cached_conversion_series_are_the_labelled_ones() {
    let sets: Vec<_> = conversion_label_sets().collect();
    let mut combinations = vec![(Status::Unattributed, None, None)];
    combinations.extend(Basis::ALL.map(|b| (Status::Credited, Some(b), None)));
    combinations.extend(InvalidReason::ALL.map(|r| (Status::Invalid, None, Some(r))));
    for (status, basis, reason) in combinations {
        let index = conversion_series_index(status, basis, reason).expect("listed");
        assert_eq!(
            sets[index],
            (
                status.as_str(),
                basis.map_or("", Basis::as_str),
                reason.map_or("", InvalidReason::as_str)
            )
        );
    }
    assert_eq!(conversion_series_index(Status::Credited, None, None), None);
}
