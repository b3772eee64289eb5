//! The commands that need no running service (`attribute`, `explain`, settings checks, the
//! `codes` CLI up to its first connection) as a user runs them: real files, real process, exit
//! codes and stderr included.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_promo-attribution"))
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_env(args, stdin, &[])
}

/// Runs with extra environment variables (and none of the caller's `PROMO__` ones).
fn run_env(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    let mut command = binary();
    for (name, _) in std::env::vars() {
        if name.starts_with("PROMO__") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .envs(env.iter().copied())
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
    // Every good line is decided and written; the rejected one makes the exit code 3.
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("error: 1 of 13 order lines rejected (exit 3)"),
        "{stderr}"
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
    assert_eq!(
        first.status.code(),
        Some(3),
        "the samples hold one malformed line"
    );
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
    assert_eq!(output.status.code(), Some(3));
    assert!(text(&output.stderr).contains("error: 1 of 1 orders rejected (exit 3)"));
    assert!(text(&output.stdout).contains("rejected before any decision (schema_violation)"));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn settings_problems_name_every_key_with_its_source_at_once() {
    let output = run(
        &[
            "run",
            "--check-config",
            "--set",
            "kafka.delivery=exactly_once",
            "--set",
            "kafka.batch_max_records=-5",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    for expected in [
        "kafka.delivery: unknown variant `exactly_once`, expected `exactly-once` or `at-least-once` (from flag --set kafka.delivery)",
        "kafka.batch_max_records: invalid value: integer `-5`, expected usize (from flag --set kafka.batch_max_records)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("settings.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokers = \"b:9092\"\n\nbatch_max_ms = \"soon\"\n",
    )
    .expect("written");
    let output = run_env(
        &["run", "--check-config", "--config", path(&file)],
        None,
        &[("PROMO__KAFKA__BATCH_MIN_MS", "later")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    for expected in [
        "kafka.batch_max_ms: invalid type: string \"soon\", expected u64 (from ",
        "settings.toml line 4)",
        "kafka.batch_min_ms: \"later\" is not a whole number; expected digits such as 100 (from environment variable PROMO__KAFKA__BATCH_MIN_MS)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn attribute_and_explain_read_the_environment_and_set_like_every_command() {
    let codes = samples().join("codes.csv");
    let orders = samples().join("orders.jsonl");
    let from_env = run_env(
        &["explain", "--codes", path(&codes), "-"],
        Some(b"{}"),
        &[("PROMO__LIMITS__MAX_CODE_BYTES", "0")],
    );
    assert_eq!(from_env.status.code(), Some(2));
    assert!(
        text(&from_env.stderr).contains(
            "limits.max_code_bytes must be greater than 0 (from environment variable PROMO__LIMITS__MAX_CODE_BYTES)"
        ),
        "{}",
        text(&from_env.stderr)
    );
    let from_set = run(
        &[
            "attribute",
            "--codes",
            path(&codes),
            "--orders",
            path(&orders),
            "--set",
            "detectors.enabled=true",
        ],
        None,
    );
    assert_eq!(from_set.status.code(), Some(2));
    assert!(
        text(&from_set.stderr).contains("detectors.customer_hmac_key must be set"),
        "{}",
        text(&from_set.stderr)
    );
    // The message's own advice works.
    let advised = run_env(
        &[
            "attribute",
            "--codes",
            path(&codes),
            "--set",
            "detectors.enabled=true",
        ],
        Some(b""),
        &[(
            "PROMO__DETECTORS__CUSTOMER_HMAC_KEY",
            "0123456789abcdef-key",
        )],
    );
    assert_eq!(advised.status.code(), Some(0), "{}", text(&advised.stderr));

    // `--config` is the name everywhere; `--settings` still works but is not advertised.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("settings.toml");
    std::fs::write(&file, "[limits]\nmax_codes_per_order = 0\n").expect("written");
    for flag in ["--config", "--settings"] {
        let output = run(
            &["explain", "--codes", path(&codes), flag, path(&file), "-"],
            Some(b"{}"),
        );
        assert_eq!(output.status.code(), Some(2), "{flag}");
        assert!(
            text(&output.stderr)
                .contains("limits.max_codes_per_order must be greater than 0 (from "),
            "{}",
            text(&output.stderr)
        );
    }
    let help = text(&run(&["attribute", "--help"], None).stdout);
    assert!(
        help.contains("--config") && !help.contains("--settings"),
        "{help}"
    );
}

#[test]
fn check_config_and_config_errors_never_show_a_secret() {
    let mut args = vec!["run".to_string(), "--check-config".to_string()];
    for property in [
        "sasl.oauthbearer.config",
        "sasl.password",
        "sasl.username",
        "ssl.key.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
    ] {
        args.push("--set".into());
        args.push(format!("kafka.common.{property}=hunter2-{property}"));
    }
    args.extend([
        "--set".into(),
        "kafka.common.security.protocol=SASL_SSL".into(),
    ]);
    args.extend([
        "--set".into(),
        "store.redis_url=redis://admin:hunter2@redis:6379/0".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_env(
        &args,
        None,
        &[(
            "PROMO__DETECTORS__CUSTOMER_HMAC_KEY",
            "hunter2-hmac-key-0123",
        )],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    for expected in [
        "\"sasl.oauthbearer.config\" = \"<redacted>\"",
        "\"security.protocol\" = \"SASL_SSL\"",
        "redis_url = \"redis://***@redis:6379/0\"",
        "customer_hmac_key = \"<redacted>\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // A TOML syntax error names the line, not its text; a URL without "://" is still redacted.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("settings.toml");
    std::fs::write(
        &file,
        "[kafka.common]\n\"sasl.password\" = hunter2-unquoted\n",
    )
    .expect("written");
    let output = run(&["run", "--check-config", "--config", path(&file)], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("settings.toml line 2: "), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let output = run(
        &[
            "run",
            "--check-config",
            "--set",
            "store.redis_url=admin:hunter2@redis:6379",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("store.redis_url must start with redis://"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn codes_commands_say_which_store_and_writing_ones_need_one_configured() {
    let codes = samples().join("codes.csv");
    let import = run(&["codes", "import", path(&codes)], None);
    assert_eq!(import.status.code(), Some(2));
    let stderr = text(&import.stderr);
    for expected in [
        "code store: redis://127.0.0.1:6379 prefix \"promo:\" (the default: no store configured)",
        "error: no code store configured, and this command writes: name the Redis it should change with --redis-url redis://HOST:6379 (or the PROMO__STORE__REDIS_URL environment variable",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    for writing in [
        vec!["expire", "ANNA10"],
        vec!["set-dates", "ANNA10", "--end", "2026-06-01"],
        vec!["rollback", "3"],
    ] {
        let mut args = vec!["codes"];
        args.extend(writing.iter().copied());
        let output = run(&args, None);
        assert_eq!(output.status.code(), Some(2), "{writing:?}");
        assert!(
            text(&output.stderr).contains("no code store configured"),
            "{writing:?}: {}",
            text(&output.stderr)
        );
    }

    // A configured store is named, password hidden (nothing listens on port 1: the connection
    // fails after the store is announced).
    let output = run_env(
        &["codes", "--prefix", "{test}:", "list"],
        None,
        &[(
            "PROMO__STORE__REDIS_URL",
            "redis://admin:hunter2@127.0.0.1:1/0",
        )],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "code store: redis://***@127.0.0.1:1/0 prefix \"{test}:\" (from environment variable PROMO__STORE__REDIS_URL)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn explain_takes_json_lines_and_a_pretty_printed_order() {
    let codes = samples().join("codes.csv");
    let orders = samples().join("orders.jsonl");
    let output = run(&["explain", "--codes", path(&codes), path(&orders)], None);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "line 12 of the samples is malformed"
    );
    assert!(!stdout.contains("trailing characters"), "{stdout}");
    for expected in [
        "=== line 1 ===",
        "Order A-1 in program 1001",
        "=== line 12 ===",
        "=== line 13 ===",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let pretty = b"{\n  \"order_id\": \"P\",\n  \"program_id\": \"1001\",\n  \"event_type\": \"sale\",\n  \"event_time\": \"2026-05-10T12:00:00Z\",\n  \"promo_codes\": [\"ANNA10\"],\n  \"touchpoints\": []\n}\n";
    let output = run(&["explain", "--codes", path(&codes), "-"], Some(pretty));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("Order P in program 1001") && !stdout.contains("=== line"),
        "{stdout}"
    );
}

/// Every argument of every subcommand, with the path to it, that has no help text.
fn args_without_help(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
            missing.push(format!("{path} {}", arg.get_id()));
        }
    }
    for sub in command.get_subcommands() {
        args_without_help(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[test]
fn every_argument_has_help_text() {
    use clap::CommandFactory;
    let mut missing = Vec::new();
    args_without_help(
        &promo_attribution::cli::Cli::command(),
        "promo-attribution",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "arguments without help:\n{}",
        missing.join("\n")
    );
    let help = text(&run(&["topics", "read", "--help"], None).stdout);
    assert!(!help.contains("18446744073709551615"), "{help}");
}

#[test]
fn set_dates_without_a_date_is_refused_before_touching_the_store() {
    let output = run(
        &[
            "codes",
            "--redis-url",
            "redis://127.0.0.1:1",
            "set-dates",
            "ANNA10",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--start <START>|--end <END>"),
        "{stderr}"
    );
}

#[test]
fn explain_formats_completions_and_healthcheck() {
    let codes = samples().join("codes.csv");
    let orders = samples().join("orders.jsonl");
    let output = run(
        &[
            "explain",
            "--codes",
            path(&codes),
            "--format",
            "json",
            path(&orders),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(13));
    assert_eq!(json[11]["rejected"], true);
    assert_eq!(json[0]["line"], 1);
    let csv = run(
        &[
            "explain",
            "--codes",
            path(&codes),
            "--format",
            "csv",
            path(&orders),
        ],
        None,
    );
    assert!(
        text(&csv.stdout).starts_with("LINE,REJECTED,TEXT\n1,false,\"Order A-1 in program 1001"),
        "{}",
        text(&csv.stdout)
    );

    let completions = run(&["completions", "bash"], None);
    assert_eq!(completions.status.code(), Some(0));
    let script = text(&completions.stdout);
    assert!(
        script.contains("complete -F") && script.contains("set-dates"),
        "{script}"
    );

    // Nothing listens on port 1: not healthy, exit 1, and the reason said.
    let down = run(&["healthcheck", "--address", "127.0.0.1:1"], None);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        text(&down.stderr).contains("127.0.0.1:1/readyz: cannot connect"),
        "{}",
        text(&down.stderr)
    );
}

/// A one-shot HTTP server answering `status` once, on a free port.
fn answer_once(status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        }
    });
    address
}

#[test]
fn healthcheck_exits_0_only_on_200() {
    let ready = run(&["healthcheck", "--address", &answer_once("200 OK")], None);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    let address = answer_once("503 Service Unavailable");
    let not_ready = run(
        &["healthcheck", "--address", &address, "--path", "/healthz"],
        None,
    );
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(
        text(&not_ready.stderr).contains(&format!("{address}/healthz: 503")),
        "{}",
        text(&not_ready.stderr)
    );
}

#[test]
fn orders_may_join_date_and_time_with_a_space_and_outputs_use_t() {
    let codes = samples().join("codes.csv");
    let order = br#"{"order_id":"S-1","program_id":"1001","event_type":"sale","event_time":"2026-05-10 12:00:00Z","promo_codes":["ANNA10"],"touchpoints":[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09 08:00:00+00:00"}]}"#;
    let output = run(&["attribute", "--codes", path(&codes)], Some(order));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let conversion: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(conversion["event_time"], "2026-05-10T12:00:00Z");
    assert_eq!(conversion["status"], "CREDITED");
    assert!(
        !text(&output.stdout).contains("2026-05-09 08"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn guard_rails_are_in_the_manifest_and_settings_debug_hides_secrets() {
    let manifest: toml::Table =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml")
            .parse()
            .expect("Cargo.toml parses");
    for lint in ["unwrap_used", "expect_used", "panic"] {
        assert_eq!(
            manifest["lints"]["clippy"][lint].as_str(),
            Some("deny"),
            "{lint}"
        );
    }
    assert!(manifest["dependencies"].get("anyhow").is_none());

    let settings = promo_attribution::settings::SettingsSources {
        overrides: vec![
            "detectors.customer_hmac_key=hunter2-hmac-key-0123".into(),
            "store.redis_url=redis://u:hunter2@h:6379".into(),
            "kafka.common.sasl.oauthbearer.config=hunter2".into(),
        ],
        ..Default::default()
    }
    .load()
    .expect("valid settings");
    let debug = format!("{settings:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert_eq!(
        settings.detectors.customer_hmac_key.expose(),
        "hunter2-hmac-key-0123"
    );
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
