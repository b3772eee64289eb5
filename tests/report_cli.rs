//! `promo-attribution report` as a user runs it: the sample orders attributed to a file, then
//! reported from that file and from a real topic holding repeats (the local broker, started
//! by `scripts/services up` like every broker test).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use promo_attribution::kafka::tools;
use serde_json::{Value, json};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut input = child.stdin.take().expect("stdin piped");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("stdin written");
    }
    drop(input);
    child.wait_with_output().expect("binary finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The sample orders attributed with the sample table: the conversions as JSON lines.
fn sample_conversions(dir: &Path) -> PathBuf {
    let path = dir.join("conversions.jsonl");
    let s = |p: PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let output = run(
        &[
            "attribute",
            "--codes",
            &s(samples().join("codes.csv")),
            "--partners",
            &s(samples().join("partners.csv")),
            "--orders",
            &s(samples().join("orders.jsonl")),
            "--conversions",
            &s(path.clone()),
        ],
        None,
    );
    // 3: the samples' one malformed line is rejected; every other order is written.
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    path
}

fn report_json(args: &[&str], stdin: Option<&[u8]>) -> (Value, String) {
    let mut all = vec!["report", "--format", "json"];
    all.extend_from_slice(args);
    let output = run(&all, stdin);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "report failed: {stderr}");
    let value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}: {}", text(&output.stdout)));
    (value, stderr)
}

/// What the sample table and orders give per code, checked by hand: ANNA10 credits A-1
/// (120.0, discount 12.0) and A-10 (60.00, 6.00), so 180.00 and 18.00 at the larger scale;
/// PODCAST15 credits A-2 (19.99) and invalidates A-4; A-11 has no currency and A-13 no money.
/// A-5 is credited on the click (its SPRING25 is not yet active), so no code row counts it.
fn expected_sample_report() -> Value {
    json!([
        {"program_id": "1001", "code_id": "LI:ANNA10", "code": "ANNA10", "owner_partner_id": "2001", "currency": "USD", "credited": 2, "revenue": "180.00", "discount": "18.00", "credited_without_amount": 0, "invalid": 0, "invalid_by_reason": {}},
        {"program_id": "1001", "code_id": "LI:DEALS20", "code": "DEALS20", "owner_partner_id": "2003", "currency": "USD", "credited": 0, "revenue": "0", "discount": "0", "credited_without_amount": 0, "invalid": 1, "invalid_by_reason": {"CODE_OWNED_BY_OTHER_PARTNER": 1}},
        {"program_id": "1001", "code_id": "LI:GONE5", "code": "GONE5", "owner_partner_id": "2006", "currency": null, "credited": 0, "revenue": "0", "discount": "0", "credited_without_amount": 0, "invalid": 1, "invalid_by_reason": {"PARTNER_CONTRACT_INACTIVE": 1}},
        {"program_id": "1001", "code_id": "LI:OLDCODE", "code": "OLDCODE", "owner_partner_id": "2002", "currency": "USD", "credited": 0, "revenue": "0", "discount": "0", "credited_without_amount": 0, "invalid": 1, "invalid_by_reason": {"CODE_INACTIVE": 1}},
        {"program_id": "1001", "code_id": "LI:PODCAST15", "code": "PODCAST15", "owner_partner_id": "2002", "currency": "USD", "credited": 1, "revenue": "19.99", "discount": "3.00", "credited_without_amount": 0, "invalid": 1, "invalid_by_reason": {"CODE_OWNER_NOT_INVOLVED": 1}},
        {"program_id": "1001", "code_id": "LI:STAFF50", "code": "STAFF50", "owner_partner_id": null, "currency": "USD", "credited": 0, "revenue": "0", "discount": "0", "credited_without_amount": 0, "invalid": 1, "invalid_by_reason": {"CODE_RESTRICTED": 1}},
        {"program_id": "1001", "code_id": "RE:^(?i)(ANNA).*", "code": "^(?i)(ANNA).*", "owner_partner_id": "2001", "currency": null, "credited": 1, "revenue": "0", "discount": "0", "credited_without_amount": 1, "invalid": 0, "invalid_by_reason": {}},
        {"program_id": "1001", "code_id": "RE:^(SUMMER).*", "code": "^(SUMMER).*", "owner_partner_id": "2004", "currency": "EUR", "credited": 1, "revenue": "80.5", "discount": "8.05", "credited_without_amount": 0, "invalid": 0, "invalid_by_reason": {}}
    ])
}

#[test]
fn report_by_code_over_the_sample_run_has_the_expected_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversions = sample_conversions(dir.path());
    let path = conversions.to_str().expect("utf-8 path");
    let (from_file, stderr) = report_json(&["--conversions", path], None);
    assert_eq!(from_file, expected_sample_report(), "{from_file:#}");
    assert!(stderr.contains("0 repeats counted once"), "{stderr}");
    // stdin is the default input, and the same bytes give the same report.
    let bytes = std::fs::read(&conversions).expect("read back");
    let (from_stdin, _) = report_json(&[], Some(&bytes));
    assert_eq!(from_stdin, from_file);
}

#[test]
fn repeats_in_a_file_count_once_and_conflicts_fail_the_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversions = std::fs::read_to_string(sample_conversions(dir.path())).expect("read");
    let doubled = format!("{conversions}{conversions}");
    let (value, stderr) = report_json(&[], Some(doubled.as_bytes()));
    assert_eq!(value, expected_sample_report());
    assert!(stderr.contains("12 repeats counted once"), "{stderr}");

    // The first line again with other bytes: reported, not counted, exit code 1.
    let first = conversions.lines().next().expect("a line");
    let altered = first.replacen("\"schema_version\":1", "\"schema_version\": 1", 1);
    let input = format!("{conversions}{altered}\n");
    let output = run(&["report", "--format", "json"], Some(input.as_bytes()));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 records repeat an event_id with different bytes"),
        "{stderr}"
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("still a report");
    assert_eq!(value, expected_sample_report());
}

#[test]
fn filters_formats_and_chart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversions = sample_conversions(dir.path());
    let path = conversions.to_str().expect("utf-8 path");
    let (none, stderr) = report_json(&["--conversions", path, "--program", "9999"], None);
    assert_eq!(none, json!([]));
    assert!(stderr.contains("12 outside the selection"), "{stderr}");
    // Only A-5 is in July: credited to 3001 on the click, its `1e2` summed as 100.
    let (july, _) = report_json(
        &[
            "--conversions",
            path,
            "--by",
            "partner",
            "--from",
            "2026-07-01T00:00:00Z",
            "--to",
            "2026-08-01T00:00:00+00:00",
        ],
        None,
    );
    assert_eq!(
        july,
        json!([{"program_id": "1001", "partner_id": "3001", "currency": "EUR", "credited": 1,
                "revenue": "100", "discount": "25", "credited_without_amount": 0, "invalid": 0,
                "invalid_by_reason": {}}])
    );

    let chart = dir.path().join("codes.svg");
    let table = run(
        &[
            "report",
            "--conversions",
            path,
            "--chart",
            chart.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(table.starts_with("program_id  code "), "{table}");
    assert!(table.contains("ANNA10"), "{table}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.contains("ANNA10"), "{svg}");

    let csv = run(
        &[
            "report",
            "--conversions",
            path,
            "--by",
            "reason",
            "--format",
            "csv",
        ],
        None,
    );
    let csv = text(&csv.stdout);
    assert!(
        csv.starts_with(
            "program_id,invalid_reason,currency,invalid,amount,discount,without_amount\n"
        ),
        "{csv}"
    );

    let usage = run(
        &[
            "report",
            "--conversions",
            path,
            "--by",
            "partner",
            "--chart",
            "x.svg",
        ],
        None,
    );
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn report_over_a_topic_with_repeats_counts_each_event_id_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversions = std::fs::read(sample_conversions(dir.path())).expect("read");
    let lines: Vec<Vec<u8>> = conversions
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let brokers = support::brokers();
    let topic = format!("{}.conversions", support::unique("report-topic"));
    tools::create_topics(brokers, &[&topic], 3).expect("create topic");
    tools::produce_records(brokers, &topic, &lines).expect("produce");
    // What a crash leaves behind: some conversions written again, byte for byte.
    tools::produce_records(brokers, &topic, &lines[..5]).expect("produce repeats");
    let (value, stderr) = report_json(&["--brokers", brokers, "--topic", &topic], None);
    assert_eq!(value, expected_sample_report(), "{value:#}");
    assert!(
        stderr.contains(&format!("report: {} records", lines.len() + 5)),
        "{stderr}"
    );
    assert!(stderr.contains("5 repeats counted once"), "{stderr}");
}
