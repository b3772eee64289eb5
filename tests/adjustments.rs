//! Refunds, cancellations and partial returns, offline: adjustment records follow the original
//! decision, every edge case gives its defined output, the records match
//! `schema/adjustment.schema.json`, and orders without adjustments come out byte for byte as
//! with the reversals off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use promo_attribution::codes::table::BuildOptions;
use promo_attribution::offline::{self, Captured};
use promo_attribution::settings::{AfterLock, Settings};
use serde_json::Value;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn settings(after_lock: AfterLock) -> Settings {
    let mut settings = Settings::default();
    settings.reversals.enabled = true;
    settings.reversals.after_lock = after_lock;
    settings
}

fn run(input: &str, settings: &Settings) -> Captured {
    let table = offline::load_table(
        &repo_path("samples/codes.csv"),
        Some(&repo_path("samples/partners.csv")),
        BuildOptions::default(),
    )
    .expect("sample table");
    offline::attribute_captured(input.as_bytes(), "test", &table, settings).expect("in memory")
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn sale(order: &str, amount: &str) -> String {
    format!(
        r#"{{"order_id":"{order}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["anna10"],"amount":{amount},"discount":12.00,"currency":"USD"}}"#
    )
}

fn adjustment(order: &str, kind: &str, id: &str, day: u32, money: &str) -> String {
    format!(
        r#"{{"order_id":"{order}","program_id":"1001","event_type":"{kind}","event_time":"2026-05-{day:02}T09:00:00Z","adjustment_id":"{id}","reason":"ITEM_RETURNED"{money}}}"#
    )
}

/// The README's worked example: a sale, a partial return, a repeat of it, a cancel.
fn worked_example() -> String {
    let refund = adjustment(
        "W-1",
        "refund",
        "R-1",
        12,
        r#","amount":80.00,"currency":"USD""#,
    );
    [
        sale("W-1", "120.00"),
        refund.clone(),
        refund,
        adjustment("W-1", "cancel", "C-1", 14, ""),
    ]
    .join("\n")
}

#[test]
fn sale_partial_return_repeat_and_cancel() {
    let out = run(&worked_example(), &settings(AfterLock::Emit));
    let conversion = &lines(&out.conversions)[0];
    let records = lines(&out.adjustments);
    assert_eq!(records.len(), 3, "{records:?}");
    let (partial, repeat, cancel) = (&records[0], &records[1], &records[2]);
    assert_eq!(
        partial, repeat,
        "a repeated adjustment_id gets the first result"
    );
    assert_eq!(partial["kind"], "PARTIAL");
    let text = String::from_utf8_lossy(&out.adjustments);
    let raw: Vec<&str> = text.lines().collect();
    // The exact decimal text: serde_json's Value would read it through a float.
    assert!(
        raw[0].contains(r#""amount_delta":-40.00,"discount_delta":0.00,"amount_after":80.00,"#),
        "{}",
        raw[0]
    );
    assert!(
        raw[2].contains(r#""amount_delta":-80.00,"discount_delta":-12.00,"amount_after":0,"#),
        "{}",
        raw[2]
    );
    assert_eq!(partial["original_event_id"], conversion["event_id"]);
    assert_eq!(partial["partner_id"], conversion["partner_id"]);
    assert_eq!(partial["code"], conversion["code"]["code_id"]);
    assert_eq!(cancel["kind"], "REVERSAL");
    assert_ne!(partial["event_id"], cancel["event_id"]);
    assert!(lines(&out.alerts).is_empty(), "no edge case here");
    assert_eq!(out.summary.orders, 1, "adjustments are not orders");
    assert_eq!(out.summary.adjustment_events, 3);
}

#[test]
fn each_edge_case_has_its_output() {
    let input = [
        // No stored decision.
        adjustment("NONE", "refund", "R", 11, r#","amount":1,"currency":"USD""#),
        // After the 30-day lock, then over-reversal of what is left.
        sale("L-1", "50"),
        adjustment("L-1", "refund", "R-late", 20 + 20, ""),
        adjustment("L-1", "cancel", "C-over", 11, ""),
        // Currency mismatch: dead letter.
        sale("X-1", "50"),
        adjustment("X-1", "refund", "R-eur", 11, r#","amount":10,"currency":"EUR""#),
        // An UNATTRIBUTED original: recorded, no alert.
        r#"{"order_id":"U-1","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","amount":30,"currency":"USD"}"#.to_string(),
        adjustment("U-1", "cancel", "C-u", 11, ""),
    ]
    .join("\n")
    .replace("2026-05-40", "2026-06-20");
    let out = run(&input, &settings(AfterLock::Emit));
    let alerts = lines(&out.alerts);
    let kinds: Vec<&str> = alerts
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "ADJUSTMENT_WITHOUT_CONVERSION",
            "ADJUSTMENT_AFTER_LOCK",
            "OVER_REVERSAL"
        ]
    );
    let records = lines(&out.adjustments);
    let by_id = |id: &str| records.iter().find(|r| r["adjustment_id"] == id);
    assert!(by_id("R").is_none(), "no record without a conversion");
    let late = by_id("R-late").expect("emitted after the lock");
    assert_eq!(
        (late["after_lock"].as_bool(), late["kind"].as_str()),
        (Some(true), Some("REVERSAL"))
    );
    let over = by_id("C-over").expect("clamped");
    assert_eq!(over["amount_delta"].to_string(), "0");
    let unattributed = by_id("C-u").expect("recorded");
    assert_eq!(unattributed["original_status"], "UNATTRIBUTED");
    assert!(by_id("R-eur").is_none());
    let rejects = String::from_utf8_lossy(&out.rejects);
    assert!(
        rejects.contains("differs from the original's USD"),
        "{rejects}"
    );
    assert_eq!(
        out.summary
            .rejected_by_reason
            .get("adjustment_currency_mismatch"),
        Some(&1)
    );

    let alert_only = run(&input, &settings(AfterLock::AlertOnly));
    let records = lines(&alert_only.adjustments);
    assert!(records.iter().all(|r| r["adjustment_id"] != "R-late"));
    let cancel = records
        .iter()
        .find(|r| r["adjustment_id"] == "C-over")
        .expect("cancel");
    assert_eq!(
        cancel["amount_delta"].to_string(),
        "-50",
        "the late refund changed nothing"
    );
}

#[test]
fn orders_without_adjustments_are_byte_identical_and_records_match_the_schema() {
    let samples = std::fs::read_to_string(repo_path("samples/orders.jsonl")).expect("samples");
    let off = run(&samples, &Settings::default());
    let on = run(&samples, &settings(AfterLock::Emit));
    assert_eq!(off.conversions, on.conversions);
    assert_eq!(off.alerts, on.alerts);
    assert_eq!(off.rejects, on.rejects);

    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schema/adjustment.schema.json")).expect("schema"),
    )
    .expect("json");
    jsonschema::draft202012::meta::validate(&schema).expect("a 2020-12 schema");
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("compiles");
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schema/examples/adjustment.json")).expect("example"),
    )
    .expect("json");
    let mut records = vec![example];
    records.extend(lines(
        &run(&worked_example(), &settings(AfterLock::Emit)).adjustments,
    ));
    for record in &records {
        let problems: Vec<String> = validator
            .iter_errors(record)
            .map(|e| e.to_string())
            .collect();
        assert!(problems.is_empty(), "{problems:?}: {record}");
    }
    let mut broken = records[0].clone();
    broken["amount_delta"] = Value::from(5);
    assert!(
        !validator.is_valid(&broken),
        "a positive delta breaks the contract"
    );

    let alerts: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schema/alert.schema.json")).expect("schema"),
    )
    .expect("json");
    let alerts = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&alerts)
        .expect("compiles");
    let edge = [
        sale("L-1", "50"),
        adjustment("L-1", "refund", "R-late", 30, ""),
        adjustment("L-1", "cancel", "C-over", 30, ""),
        adjustment("NONE", "cancel", "C", 11, ""),
    ]
    .join("\n")
    .replace("2026-05-30", "2026-07-30");
    let raised = lines(&run(&edge, &settings(AfterLock::Emit)).alerts);
    assert_eq!(
        raised.len(),
        4,
        "without conversion, after lock twice, over-reversal"
    );
    for alert in &raised {
        let problems: Vec<String> = alerts.iter_errors(alert).map(|e| e.to_string()).collect();
        assert!(problems.is_empty(), "{problems:?}: {alert}");
    }
}

#[test]
fn the_report_nets_adjustments_by_code_and_is_unchanged_without_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(&worked_example(), &settings(AfterLock::Emit));
    let conversions = dir.path().join("conversions.jsonl");
    let adjustments = dir.path().join("adjustments.jsonl");
    std::fs::write(&conversions, &out.conversions).expect("write");
    // The repeat of R-1 is in the file twice; it is counted once.
    std::fs::write(&adjustments, &out.adjustments).expect("write");
    let report = |extra: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
            .arg("report")
            .arg("--conversions")
            .arg(&conversions)
            .args(["--format", "csv"])
            .args(extra)
            .output()
            .expect("run report");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf8")
    };
    let plain = report(&[]);
    assert!(!plain.contains("net_revenue"), "{plain}");
    let netted = report(&["--adjustments".as_ref(), adjustments.as_os_str()]);
    let mut lines = netted.lines();
    let header = lines.next().expect("header");
    assert!(
        header.ends_with(",reversed,reversed_amount,net_revenue"),
        "{header}"
    );
    assert_eq!(
        plain
            .lines()
            .next()
            .map(|h| format!("{h},reversed,reversed_amount,net_revenue"))
            .as_deref(),
        Some(header)
    );
    let row = lines.next().expect("a row");
    assert!(
        row.contains("LI:ANNA10") && row.ends_with(",2,120.00,0.00"),
        "{row}"
    );
}

#[test]
fn explain_shows_the_original_the_log_the_lock_and_the_delta() {
    let table = offline::load_table(
        &repo_path("samples/codes.csv"),
        Some(&repo_path("samples/partners.csv")),
        BuildOptions::default(),
    )
    .expect("sample table");
    let example =
        std::fs::read_to_string(repo_path("samples/adjustments-example.jsonl")).expect("example");
    let lines: Vec<&[u8]> = example.lines().map(str::as_bytes).collect();
    let text = promo_attribution::reversals::explain::explain_adjustment(
        lines[2],
        &lines[..2],
        &table,
        &Settings::default(),
    );
    for expected in [
        "stored original: conversion",
        "CREDITED",
        "Adjustments before it: 1.",
        "\"R-1\": new total 80.00",
        "within it",
        "REVERSAL: amount 80.00 -> 0 (delta -80.00)",
        "\"kind\":\"REVERSAL\"",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let orphan = promo_attribution::reversals::explain::explain_adjustment(
        lines[2],
        &[],
        &table,
        &Settings::default(),
    );
    assert!(
        orphan.contains("Alert: ADJUSTMENT_WITHOUT_CONVERSION"),
        "{orphan}"
    );
}
