//! The `attribute` and `explain` commands as a user runs them: real files, real process, exit
//! codes and stderr included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = binary()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input)
            .expect("stdin written");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("binary finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn attribute_writes_one_conversion_per_good_line_in_order_and_reports_bad_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversions = dir.path().join("conversions.jsonl");
    let alerts = dir.path().join("alerts.jsonl");
    let codes = samples().join("codes.csv");
    let partners = samples().join("partners.csv");
    let orders = samples().join("orders.jsonl");
    let output = run(
        &[
            "attribute",
            "--codes",
            codes.to_str().expect("utf-8 path"),
            "--partners",
            partners.to_str().expect("utf-8 path"),
            "--orders",
            orders.to_str().expect("utf-8 path"),
            "--conversions",
            conversions.to_str().expect("utf-8 path"),
            "--alerts",
            alerts.to_str().expect("utf-8 path"),
        ],
        None,
    );
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "bad lines must not fail the run: {stderr}"
    );
    assert!(
        stderr.contains("orders.jsonl:12: malformed JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("12 orders decided") && stderr.contains("1 rejected lines"),
        "{stderr}"
    );

    let written = std::fs::read_to_string(&conversions).expect("conversions written");
    let order_ids: Vec<String> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["order_id"].to_string()
        })
        .collect();
    let expected: Vec<String> = (1..=13)
        .filter(|i| *i != 12)
        .map(|i| format!("\"A-{i}\""))
        .collect();
    assert_eq!(order_ids, expected);
    let alert_count = std::fs::read_to_string(&alerts)
        .expect("alerts written")
        .lines()
        .count();
    assert_eq!(alert_count, 7);
}

#[test]
fn attribute_reads_stdin_and_writes_stdout_byte_identically_across_runs() {
    let codes = samples().join("codes.csv");
    let orders = std::fs::read(samples().join("orders.jsonl")).expect("orders");
    let args = ["attribute", "--codes", codes.to_str().expect("utf-8 path")];
    let first = run(&args, Some(&orders));
    let second = run(&args, Some(&orders));
    assert!(first.status.success());
    assert!(!first.stdout.is_empty());
    assert_eq!(
        first.stdout, second.stdout,
        "same input and table give the same bytes"
    );
}

#[test]
fn an_invalid_code_table_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let codes = dir.path().join("codes.csv");
    std::fs::write(
        &codes,
        "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n\
         A,1,5,TRACKING,ALWAYS,LI\n\
         B,1,5,TRACKING,MAYBE,LI\n\
         (?<=x)y,1,5,TRACKING,ALWAYS,RE\n\
         a,1,6,TRACKING,ALWAYS,LI\n",
    )
    .expect("write codes");
    let output = run(
        &["attribute", "--codes", codes.to_str().expect("utf-8 path")],
        Some(b""),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    // Row problems and cross-row problems of the remaining rows come in one report, in line order.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("codes.csv:"))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("codes.csv:3: column \"Credit Rule\""),
        "{stderr}"
    );
    assert!(
        lines[1].contains("codes.csv:4: column \"Promo Code\": regex"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("codes.csv:5: column \"Promo Code\"") && lines[2].contains("line 2"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing is decided with a broken table"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    assert_eq!(run(&["attribute"], None).status.code(), Some(2));
    let missing = run(
        &["attribute", "--codes", "/nonexistent/codes.csv"],
        Some(b""),
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/codes.csv"));
}

#[test]
fn explain_walks_through_the_decision() {
    let codes = samples().join("codes.csv");
    let partners = samples().join("partners.csv");
    let order = br#"{"order_id":"X","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":[" podcast15 "],"touchpoints":[{"partner_id":"2002","click_id":"old","ts":"2026-04-01T00:00:00Z"},{"partner_id":"3001","click_id":"c","ts":"2026-05-10T11:00:00Z"}]}"#;
    let output = run(
        &[
            "explain",
            "--codes",
            codes.to_str().expect("utf-8 path"),
            "--partners",
            partners.to_str().expect("utf-8 path"),
            "-",
        ],
        Some(order),
    );
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    for expected in [
        "exact key \"PODCAST15\"",
        "LI:PODCAST15 (applies)",
        "=> valid at the event time",
        "click old at 2026-04-01T00:00:00Z (click, group PREFERRED, window 14 days): not eligible: older than the partner's 14-day referral window",
        "winning click c by partner 3001",
        "outcome: INVALID, reason CODE_OWNED_BY_OTHER_PARTNER, invalid partner 3001",
        "CODE_USED_BY_UNAUTHORIZED_PARTNER (high)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn explain_says_why_an_order_is_rejected() {
    let codes = samples().join("codes.csv");
    let output = run(
        &[
            "explain",
            "--codes",
            codes.to_str().expect("utf-8 path"),
            "-",
        ],
        Some(br#"{"order_id":"X"}"#),
    );
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("rejected before any decision (schema_violation)"));
}

/// Issue 13, item 4: a rejected line is reported by field and rule, never with its value.
#[test]
fn rejected_lines_name_the_field_and_rule_without_the_value() {
    let codes = samples().join("codes.csv");
    let orders = format!(
        "{}\n{}\n",
        r#"{"order_id":"o1","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","customer":{"id":4111111111}}"#,
        format_args!(
            r#"{{"order_id":"{}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z"}}"#,
            "O".repeat(60_000)
        )
    );
    let output = run(
        &["attribute", "--codes", codes.to_str().expect("utf-8 path")],
        Some(orders.as_bytes()),
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("stdin:1: does not match the order schema: customer.id: invalid type: integer, expected a string"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "stdin:2: field order_id is 60000 bytes, over the limit of 256 (limits.max_id_bytes)"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("4111111111") && !stderr.contains("OOOO"),
        "{stderr}"
    );
}
