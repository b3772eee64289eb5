//! The published JSON Schemas (`schema/*.schema.json`) against what the engine really reads and
//! writes: the examples validate, every conversion and alert of a run over the samples validates,
//! the order schema agrees with the order parser, and documents that break the contract are
//! rejected.
//!
//! Validation is offline: the schemas reference nothing outside themselves and the 2020-12
//! meta-schema ships with the validator. `format` is asserted, not just annotated.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::offline;
use promo_attribution::schema::parse_order;
use promo_attribution::settings::{InputLimits, Settings};
use serde_json::{Value, json};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_text(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_json(relative: &str) -> Value {
    serde_json::from_str(&read_text(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid JSON: {e}"))
}

fn schema_document(name: &str) -> Value {
    read_json(&format!("schema/{name}.schema.json"))
}

/// A validator for `schema/<name>.schema.json` that checks the schema against the 2020-12
/// meta-schema and asserts `format` keywords.
fn validator(name: &str) -> Validator {
    let schema = schema_document(name);
    assert_eq!(
        schema["$schema"], DRAFT_2020_12,
        "schema/{name}.schema.json must declare draft 2020-12"
    );
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("schema/{name}.schema.json is not a valid 2020-12 schema: {error}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema/{name}.schema.json does not compile: {e}"))
}

/// Every violation of `instance`, one per line, empty when it is valid.
fn violations(validator: &Validator, instance: &Value) -> String {
    validator
        .iter_errors(instance)
        .map(|error| format!("  at {:?}: {error}", error.instance_path().as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_valid(validator: &Validator, instance: &Value, what: &str) {
    let problems = violations(validator, instance);
    assert!(
        problems.is_empty(),
        "{what} does not match its schema:\n{problems}\ninstance: {instance}"
    );
}

fn assert_rejected(validator: &Validator, instance: &Value, what: &str) {
    assert!(
        !validator.is_valid(instance),
        "the schema accepts {what}, which breaks the contract: {instance}"
    );
}

fn json_lines(bytes: &[u8], what: &str) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what} is not UTF-8: {e}"));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what} line {} is not JSON: {e}: {line}", i + 1))
        })
        .collect()
}

/// What one offline run wrote.
struct RunOutput {
    conversions: Vec<Value>,
    alerts: Vec<Value>,
    orders_decided: u64,
}

/// Runs the offline engine, as `promo-attribution attribute` does, over the sample code table
/// and partners with `orders` as the input.
fn run_engine(orders: &[u8], origin: &str, settings: &Settings) -> RunOutput {
    let table = offline::load_table(
        &repo_path("samples/codes.csv"),
        Some(&repo_path("samples/partners.csv")),
        BuildOptions::default(),
    )
    .unwrap_or_else(|e| panic!("the sample code table does not load: {e}"));
    let run = offline::attribute_captured(orders, origin, &table, settings)
        .expect("writing to memory cannot fail");
    RunOutput {
        conversions: json_lines(&run.conversions, "conversions"),
        alerts: json_lines(&run.alerts, "alerts"),
        orders_decided: run.summary.orders,
    }
}

fn sample_run(settings: &Settings) -> RunOutput {
    let orders = std::fs::read(repo_path("samples/orders.jsonl"))
        .expect("samples/orders.jsonl must be readable");
    run_engine(&orders, "samples/orders.jsonl", settings)
}

/// The non-default foreign-code rule: the click winner is credited even on another's code.
fn credit_click_winner() -> Settings {
    Settings::from_toml_str(
        "[attribution]\nforeign_code = \"credit_click_winner\"\n",
        "credit_click_winner",
    )
    .unwrap_or_else(|e| panic!("the test settings do not load: {e}"))
}

/// Checks every record of a run against the conversion and alert schemas.
fn assert_run_matches_schemas(run: &RunOutput, what: &str) {
    assert_eq!(
        run.conversions.len() as u64,
        run.orders_decided,
        "{what}: one conversion per decided order"
    );
    let conversions = validator("conversion");
    for conversion in &run.conversions {
        assert_valid(
            &conversions,
            conversion,
            &format!("{what}: the conversion of order {}", conversion["order_id"]),
        );
    }
    let alerts = validator("alert");
    for alert in &run.alerts {
        assert_valid(
            &alerts,
            alert,
            &format!(
                "{what}: the {} alert of {}",
                alert["kind"], alert["order_ids"]
            ),
        );
    }
}

#[test]
fn schemas_are_valid_draft_2020_12_and_carry_their_example() {
    for name in ["order", "conversion", "alert"] {
        let _ = validator(name);
        let schema = schema_document(name);
        let example = read_json(&format!("schema/examples/{name}.json"));
        let examples = schema["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("schema/{name}.schema.json has no examples array"));
        assert!(
            examples.contains(&example),
            "the examples of schema/{name}.schema.json must include schema/examples/{name}.json"
        );
    }
}

#[test]
fn examples_match_their_schemas() {
    for name in ["order", "conversion", "alert"] {
        let validator = validator(name);
        let example = read_json(&format!("schema/examples/{name}.json"));
        assert_valid(
            &validator,
            &example,
            &format!("schema/examples/{name}.json"),
        );
        for (i, inline) in schema_document(name)["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            assert_valid(
                &validator,
                inline,
                &format!("examples[{i}] of schema/{name}.schema.json"),
            );
        }
    }
}

#[test]
fn example_order_is_accepted_and_decided_by_the_engine() {
    let text = read_text("schema/examples/order.json");
    if let Err(error) = parse_order(text.as_bytes(), &InputLimits::default()) {
        panic!("the order parser rejects schema/examples/order.json: {error}");
    }
    // The engine reads one order per line.
    let compact = serde_json::to_string(&read_json("schema/examples/order.json"))
        .expect("a JSON value serializes");
    let run = run_engine(
        format!("{compact}\n").as_bytes(),
        "example",
        &Settings::default(),
    );
    assert_eq!(run.conversions.len(), 1, "one order gives one conversion");
    let conversions = validator("conversion");
    assert_valid(
        &conversions,
        &run.conversions[0],
        "the example order's conversion",
    );
    let alerts = validator("alert");
    for alert in &run.alerts {
        assert_valid(&alerts, alert, "an alert of the example order");
    }
}

#[test]
fn every_conversion_and_alert_of_the_sample_run_matches_its_schema() {
    for (settings, what) in [
        (Settings::default(), "samples, default settings"),
        (
            credit_click_winner(),
            "samples, foreign_code = credit_click_winner",
        ),
    ] {
        let run = sample_run(&settings);
        assert!(
            run.orders_decided > 0,
            "{what}: the samples must decide some orders"
        );
        assert!(
            !run.alerts.is_empty(),
            "{what}: the samples are meant to raise alerts"
        );
        assert_run_matches_schemas(&run, what);
    }
}

/// Orders beyond the samples that reach other rules: offsets other than Z, lower-case
/// separators, a code not yet active, a restricted code without clicks, views and inactive
/// partners only, a credit-group override, an expired code whose owner won the clicks, codes of
/// two partners, a code another partner owns, an empty order.
const EDGE_ORDERS: &str = r#"{"order_id":"E-1","program_id":"1001","event_type":"sale","event_time":"2026-07-10T14:00:00+02:00","promo_codes":["SPRING25"],"touchpoints":[{"partner_id":"2003","click_id":"k1","ts":"2026-07-09T10:00:00Z"}]}
{"order_id":"E-2","program_id":"1001","event_type":"sale","event_time":"2025-12-31t12:00:00.125-05:00","promo_codes":["ANNA10"]}
{"order_id":"E-3","program_id":"1001","event_type":"lead","event_time":"2026-05-10T12:00:00Z","promo_codes":["STAFF50"],"touchpoints":null}
{"order_id":"E-4","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["PODCAST15"],"touchpoints":[{"partner_id":"3001","click_id":"v1","ts":"2026-05-10T11:00:00Z","kind":"view"},{"partner_id":"3002","click_id":"k2","ts":"2026-05-10T11:00:00z"}]}
{"order_id":"E-5","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["DEALS20"],"touchpoints":[{"partner_id":"3001","click_id":"k3","ts":"2026-05-10T10:00:00Z","credit_group":"NON_PREFERRED"},{"partner_id":"2003","click_id":"k4","ts":"2026-05-01T10:00:00Z"}]}
{"order_id":"E-6","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["summer-x","VIPONCE","DEALS20"],"touchpoints":[{"partner_id":"3001","click_id":"k5","ts":"2026-05-10T10:00:00Z"}]}
{"order_id":"E-7","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["PODCAST15","nope"],"touchpoints":[{"partner_id":"3001","click_id":"k6","ts":"2026-05-10T10:00:00Z"}],"customer":{"id":"c1"},"amount":10}
{"order_id":"E-8","program_id":"9999","event_type":"sale","event_time":"2026-05-10T12:00:00Z","schema_version":1}
"#;

#[test]
fn edge_case_orders_produce_records_that_match_the_schemas() {
    for (settings, what) in [
        (Settings::default(), "edge orders, default settings"),
        (
            credit_click_winner(),
            "edge orders, foreign_code = credit_click_winner",
        ),
    ] {
        let run = run_engine(EDGE_ORDERS.as_bytes(), "edge", &settings);
        assert_eq!(
            run.orders_decided,
            EDGE_ORDERS.lines().count() as u64,
            "{what}: every edge order must be accepted"
        );
        assert_run_matches_schemas(&run, what);
    }
    let order = validator("order");
    for line in EDGE_ORDERS.lines() {
        let document: Value = serde_json::from_str(line).expect("edge orders are JSON");
        assert_valid(
            &order,
            &document,
            &format!("edge order {}", document["order_id"]),
        );
    }
}

#[test]
fn conversion_and_alert_examples_are_real_engine_output() {
    let run = sample_run(&Settings::default());
    let conversion = read_json("schema/examples/conversion.json");
    let produced = run
        .conversions
        .iter()
        .find(|c| c["order_id"] == conversion["order_id"])
        .unwrap_or_else(|| {
            panic!(
                "the sample run has no conversion for order {}",
                conversion["order_id"]
            )
        });
    assert_eq!(
        produced, &conversion,
        "schema/examples/conversion.json differs from what the engine now writes for that \
         sample order; regenerate it (and the schema's examples) from the sample run"
    );
    let alert = read_json("schema/examples/alert.json");
    assert!(
        run.alerts.contains(&alert),
        "schema/examples/alert.json is not among the alerts of the sample run; regenerate it \
         (and the schema's examples) from the sample run. Alerts: {:#?}",
        run.alerts
    );
}

#[test]
fn order_schema_agrees_with_the_order_parser_on_the_samples() {
    let validator = validator("order");
    let text = read_text("samples/orders.jsonl");
    let limits = InputLimits::default();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_order(line.as_bytes(), &limits);
        match serde_json::from_str::<Value>(line) {
            // Not JSON at all: no schema applies, and the parser must reject it too.
            Err(_) => assert!(
                parsed.is_err(),
                "samples/orders.jsonl:{number} is not JSON but the parser accepts it"
            ),
            Ok(document) => assert_eq!(
                validator.is_valid(&document),
                parsed.is_ok(),
                "schema and parser disagree on samples/orders.jsonl:{number} (parser: {:?}); \
                 schema violations:\n{}",
                parsed.as_ref().err(),
                violations(&validator, &document)
            ),
        }
    }
}

fn minimal_order() -> Value {
    json!({
        "order_id": "o-1",
        "program_id": "1001",
        "event_type": "sale",
        "event_time": "2026-05-10T12:00:00Z"
    })
}

fn with(base: &Value, changes: &[(&str, Value)]) -> Value {
    let mut document = base.clone();
    let object = document
        .as_object_mut()
        .expect("the base document is an object");
    for (key, value) in changes {
        object.insert((*key).to_string(), value.clone());
    }
    document
}

fn without(base: &Value, key: &str) -> Value {
    let mut document = base.clone();
    document
        .as_object_mut()
        .expect("the base document is an object")
        .remove(key);
    document
}

fn touchpoint(changes: &[(&str, Value)]) -> Value {
    let base = json!({"partner_id": "2001", "click_id": "c1", "ts": "2026-05-09T08:00:00Z"});
    with(
        &minimal_order(),
        &[("touchpoints", json!([with(&base, changes)]))],
    )
}

/// Orders on which the schema and `parse_order` (with default limits) must give the same verdict.
fn order_cases() -> Vec<(&'static str, Value, bool)> {
    let order = minimal_order();
    vec![
        ("the minimal order", order.clone(), true),
        (
            "schema_version 1",
            with(&order, &[("schema_version", json!(1))]),
            true,
        ),
        (
            "schema_version null",
            with(&order, &[("schema_version", json!(null))]),
            true,
        ),
        (
            "schema_version 2",
            with(&order, &[("schema_version", json!(2))]),
            false,
        ),
        (
            "schema_version as a string",
            with(&order, &[("schema_version", json!("1"))]),
            false,
        ),
        (
            "a numeric order_id",
            with(&order, &[("order_id", json!(1))]),
            false,
        ),
        (
            "a numeric program_id",
            with(&order, &[("program_id", json!(1001))]),
            false,
        ),
        (
            "a blank order_id",
            with(&order, &[("order_id", json!("  "))]),
            false,
        ),
        (
            "an empty event_type",
            with(&order, &[("event_type", json!(""))]),
            false,
        ),
        ("a missing order_id", without(&order, "order_id"), false),
        ("a missing program_id", without(&order, "program_id"), false),
        ("a missing event_type", without(&order, "event_type"), false),
        ("a missing event_time", without(&order, "event_time"), false),
        (
            "an event_time with an offset",
            with(
                &order,
                &[("event_time", json!("2026-05-10T14:00:00.5+02:00"))],
            ),
            true,
        ),
        (
            "an event_time without offset",
            with(&order, &[("event_time", json!("2026-05-10T12:00:00"))]),
            false,
        ),
        (
            "a date as event_time",
            with(&order, &[("event_time", json!("2026-05-10"))]),
            false,
        ),
        (
            "an impossible date",
            with(&order, &[("event_time", json!("2026-02-30T12:00:00Z"))]),
            false,
        ),
        (
            "an event_time without seconds",
            with(&order, &[("event_time", json!("2026-05-10T12:00Z"))]),
            false,
        ),
        (
            "a numeric event_time",
            with(&order, &[("event_time", json!(1_778_414_400))]),
            false,
        ),
        (
            "null lists",
            with(
                &order,
                &[("promo_codes", json!(null)), ("touchpoints", json!(null))],
            ),
            true,
        ),
        (
            "a promo code list",
            with(&order, &[("promo_codes", json!(["ANNA10", "x"]))]),
            true,
        ),
        (
            "a promo code that is a number",
            with(&order, &[("promo_codes", json!([10]))]),
            false,
        ),
        (
            "promo_codes as a string",
            with(&order, &[("promo_codes", json!("ANNA10"))]),
            false,
        ),
        (
            "touchpoints as an object",
            with(&order, &[("touchpoints", json!({}))]),
            false,
        ),
        ("a plain click", touchpoint(&[]), true),
        (
            "a view with a credit group",
            touchpoint(&[
                ("kind", json!("view")),
                ("credit_group", json!("NON_PREFERRED")),
            ]),
            true,
        ),
        (
            "a null credit group",
            touchpoint(&[("credit_group", json!(null))]),
            true,
        ),
        (
            "an unknown touchpoint field",
            touchpoint(&[("campaign", json!("x"))]),
            true,
        ),
        (
            "a touchpoint kind hover",
            touchpoint(&[("kind", json!("hover"))]),
            false,
        ),
        (
            "a touchpoint kind null (a click)",
            touchpoint(&[("kind", json!(null))]),
            true,
        ),
        (
            "a blank touchpoint partner_id",
            touchpoint(&[("partner_id", json!(" "))]),
            false,
        ),
        (
            "a blank click_id",
            touchpoint(&[("click_id", json!(""))]),
            false,
        ),
        (
            "an event_time with a space for T (RFC 3339 5.6)",
            with(&order, &[("event_time", json!("2026-05-10 12:00:00Z"))]),
            true,
        ),
        (
            "an event_time with a space and an impossible hour",
            with(&order, &[("event_time", json!("2026-05-10 25:00:00Z"))]),
            false,
        ),
        (
            "a lowercase credit group",
            touchpoint(&[("credit_group", json!("preferred"))]),
            false,
        ),
        (
            "a numeric partner_id",
            touchpoint(&[("partner_id", json!(2001))]),
            false,
        ),
        (
            "a touchpoint ts without offset",
            touchpoint(&[("ts", json!("2026-05-09T08:00:00"))]),
            false,
        ),
        (
            "null optional fields",
            with(
                &order,
                &[
                    ("event_id", json!(null)),
                    ("customer", json!(null)),
                    ("risk", json!(null)),
                    ("amount", json!(null)),
                    ("discount", json!(null)),
                    ("currency", json!(null)),
                ],
            ),
            true,
        ),
        (
            "full customer and risk",
            with(
                &order,
                &[
                    (
                        "customer",
                        json!({"id": "c", "email_sha256": "ab", "status": "new", "tier": 3}),
                    ),
                    (
                        "risk",
                        json!({"ip_hash": "i", "device_hash": "d", "score": 0.2}),
                    ),
                ],
            ),
            true,
        ),
        (
            "a numeric customer id",
            with(&order, &[("customer", json!({"id": 42}))]),
            false,
        ),
        (
            "a numeric event_id",
            with(&order, &[("event_id", json!(7))]),
            false,
        ),
        (
            "amount as a string",
            with(&order, &[("amount", json!("12.50"))]),
            false,
        ),
        (
            "integer amount and discount",
            with(&order, &[("amount", json!(120)), ("discount", json!(-5))]),
            true,
        ),
        (
            "a numeric currency",
            with(&order, &[("currency", json!(840))]),
            false,
        ),
        (
            "unknown top-level fields",
            with(
                &order,
                &[
                    ("channel", json!("web")),
                    ("items", json!([{"sku": "a"}, 3])),
                ],
            ),
            true,
        ),
    ]
}

#[test]
fn order_schema_agrees_with_the_order_parser() {
    let validator = validator("order");
    let limits = InputLimits::default();
    let mut disagreements = Vec::new();
    for (label, document, expected) in order_cases() {
        let bytes = serde_json::to_vec(&document).expect("a JSON value serializes");
        let parsed = parse_order(&bytes, &limits);
        let schema_ok = validator.is_valid(&document);
        if schema_ok != expected || parsed.is_ok() != expected {
            disagreements.push(format!(
                "{label}: expected {}, schema says {schema_ok}, parser says {:?}\n  {document}\n{}",
                if expected { "valid" } else { "invalid" },
                parsed.as_ref().map(|_| "valid").map_err(|e| e.to_string()),
                violations(&validator, &document)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn order_schema_rejects_a_touchpoint_missing_a_required_field() {
    let validator = validator("order");
    let limits = InputLimits::default();
    for field in ["partner_id", "click_id", "ts"] {
        let mut document = touchpoint(&[]);
        document["touchpoints"][0]
            .as_object_mut()
            .expect("the touchpoint is an object")
            .remove(field);
        assert_rejected(
            &validator,
            &document,
            &format!("a touchpoint without {field}"),
        );
        let bytes = serde_json::to_vec(&document).expect("a JSON value serializes");
        assert!(
            parse_order(&bytes, &limits).is_err(),
            "the parser accepts a touchpoint without {field}"
        );
    }
}

#[test]
fn conversion_schema_rejects_documents_that_break_the_contract() {
    let validator = validator("conversion");
    let example = read_json("schema/examples/conversion.json");
    let mut code_without_id = example.clone();
    code_without_id["code"]
        .as_object_mut()
        .expect("the example has a code")
        .remove("code_id");
    let mut click_with_bad_group = example.clone();
    click_with_bad_group["winning_click"]["credit_group"] = json!("GOLD");
    let cases = [
        ("status PAID", with(&example, &[("status", json!("PAID"))])),
        (
            "a lowercase status",
            with(&example, &[("status", json!("credited"))]),
        ),
        (
            "an unknown basis",
            with(&example, &[("basis", json!("COUPON"))]),
        ),
        (
            "an unknown invalid_reason",
            with(&example, &[("invalid_reason", json!("FRAUD"))]),
        ),
        (
            "schema_version 2",
            with(&example, &[("schema_version", json!(2))]),
        ),
        (
            "an upper-case event_id",
            with(
                &example,
                &[("event_id", json!("899466EF058BE458E492791E1D26899A"))],
            ),
        ),
        (
            "a short event_id",
            with(&example, &[("event_id", json!("899466ef"))]),
        ),
        (
            "a numeric order_id",
            with(&example, &[("order_id", json!(1))]),
        ),
        (
            "an event_time without offset",
            with(&example, &[("event_time", json!("2026-05-10T12:00:00"))]),
        ),
        ("a missing partner_id", without(&example, "partner_id")),
        (
            "a missing unknown_codes",
            without(&example, "unknown_codes"),
        ),
        (
            "an extra field",
            with(&example, &[("order_total", json!(120.0))]),
        ),
        (
            "null involved_partners",
            with(&example, &[("involved_partners", json!(null))]),
        ),
        (
            "a numeric partner in involved_partners",
            with(&example, &[("involved_partners", json!([3001]))]),
        ),
        ("a code without code_id", code_without_id),
        (
            "an unknown match_type",
            with(
                &example,
                &[(
                    "code",
                    with(&example["code"], &[("match_type", json!("FUZZY"))]),
                )],
            ),
        ),
        (
            "a winning click with an unknown credit group",
            click_with_bad_group,
        ),
        (
            "CREDITED without a partner",
            with(&example, &[("partner_id", json!(null))]),
        ),
        (
            "CREDITED with an invalid_reason",
            with(&example, &[("invalid_reason", json!("CODE_EXPIRED"))]),
        ),
        (
            "INVALID without an invalid_reason",
            with(
                &example,
                &[
                    ("status", json!("INVALID")),
                    ("basis", json!(null)),
                    ("partner_id", json!(null)),
                    ("overridden_partner_id", json!(null)),
                ],
            ),
        ),
        (
            "UNATTRIBUTED with a credited partner",
            with(
                &example,
                &[("status", json!("UNATTRIBUTED")), ("basis", json!(null))],
            ),
        ),
        (
            "an overridden partner on a CLICK conversion",
            with(&example, &[("basis", json!("CLICK"))]),
        ),
        (
            "a CODE_WINNER conversion without a code",
            with(
                &example,
                &[
                    ("basis", json!("CODE_WINNER")),
                    ("overridden_partner_id", json!(null)),
                    ("code", json!(null)),
                ],
            ),
        ),
    ];
    for (label, document) in &cases {
        assert_rejected(&validator, document, label);
    }
}

#[test]
fn alert_schema_rejects_documents_that_break_the_contract() {
    let validator = validator("alert");
    let example = read_json("schema/examples/alert.json");
    let too_many_orders: Vec<String> = (1..=21).map(|i| format!("A-{i}")).collect();
    let cases = [
        (
            "an unknown kind",
            with(&example, &[("kind", json!("CODE_SHARED_ON_SOCIAL_MEDIA"))]),
        ),
        (
            "a kind in lower case",
            with(
                &example,
                &[("kind", json!("code_used_by_unauthorized_partner"))],
            ),
        ),
        (
            "severity critical",
            with(&example, &[("severity", json!("critical"))]),
        ),
        (
            "a severity that does not fit the kind",
            with(&example, &[("severity", json!("low"))]),
        ),
        (
            "21 order ids",
            with(&example, &[("order_ids", json!(too_many_orders))]),
        ),
        ("no order ids", with(&example, &[("order_ids", json!([]))])),
        (
            "a detail that is a string",
            with(&example, &[("detail", json!("leaked"))]),
        ),
        (
            "a detail missing its kind's keys",
            with(&example, &[("detail", json!({}))]),
        ),
        ("count 0", with(&example, &[("count", json!(0))])),
        (
            "a fractional count",
            with(&example, &[("count", json!(1.5))]),
        ),
        (
            "an upper-case alert_id",
            with(
                &example,
                &[("alert_id", json!("3178EC702C2238C5427FC42AFA441796"))],
            ),
        ),
        (
            "a missing code_table_version",
            without(&example, "code_table_version"),
        ),
        (
            "an extra field",
            with(&example, &[("partner_name", json!("Anna"))]),
        ),
        (
            "a numeric owner_partner_id",
            with(&example, &[("owner_partner_id", json!(2003))]),
        ),
        (
            "an event_time without offset",
            with(&example, &[("event_time", json!("2026-05-10 12:00:00"))]),
        ),
    ];
    for (label, document) in &cases {
        assert_rejected(&validator, document, label);
    }
}

/// Money goes from the order to its conversion as the same JSON number text: no float on the
/// way, so `19.99`, `100.10` and `1e2` are written exactly as the order had them.
#[test]
fn conversions_carry_the_orders_money_as_written() {
    let cases = [
        ("0.1", "0.1"),
        ("19.99", "19.99"),
        ("100.10", "-0.00"),
        ("1e2", "1E+2"),
        ("1e-7", "0"),
        ("123456789012345678901234567890.12", "5e-324"),
    ];
    let mut orders = String::new();
    for (i, (amount, discount)) in cases.iter().enumerate() {
        orders.push_str(&format!(
            r#"{{"order_id":"M-{i}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["ANNA10"],"amount": {amount} ,"discount":{discount},"currency":"EUR"}}"#
        ));
        orders.push('\n');
    }
    orders.push_str(r#"{"order_id":"M-none","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","amount":null}"#);
    orders.push('\n');
    let table = offline::load_table(
        &repo_path("samples/codes.csv"),
        Some(&repo_path("samples/partners.csv")),
        BuildOptions::default(),
    )
    .expect("the sample table loads");
    let run = offline::attribute_captured(orders.as_bytes(), "money", &table, &Settings::default())
        .expect("writing to memory cannot fail");
    let text = String::from_utf8(run.conversions).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), cases.len() + 1, "{text}");
    for ((amount, discount), line) in cases.iter().zip(&lines) {
        let expected = format!(r#","amount":{amount},"discount":{discount},"currency":"EUR","#);
        assert!(line.contains(&expected), "{expected} not in {line}");
    }
    assert!(
        lines[cases.len()].contains(r#""amount":null,"discount":null,"currency":null,"#),
        "{}",
        lines[cases.len()]
    );
    let validator = validator("conversion");
    for line in &lines {
        let document: Value = serde_json::from_str(line).expect("JSON");
        assert_valid(&validator, &document, line);
    }
}

#[test]
fn sample_conversions_carry_their_orders_money_and_older_records_stay_valid() {
    let run = sample_run(&Settings::default());
    let orders: Vec<Value> = read_text("samples/orders.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for conversion in &run.conversions {
        let order = orders
            .iter()
            .find(|o| o["order_id"] == conversion["order_id"])
            .expect("the order of every conversion");
        for field in ["amount", "discount", "currency"] {
            assert_eq!(
                conversion[field], order[field],
                "{field} of {}",
                conversion["order_id"]
            );
            assert!(conversion.get(field).is_some(), "{field} is always written");
        }
    }
    // Conversions written before the money fields existed are still version 1 records.
    let validator = validator("conversion");
    let mut older = read_json("schema/examples/conversion.json");
    for field in ["amount", "discount", "currency"] {
        older.as_object_mut().expect("object").remove(field);
    }
    assert_valid(&validator, &older, "a conversion without the money fields");
    let mut string_amount = read_json("schema/examples/conversion.json");
    string_amount["amount"] = json!("120.00");
    assert_rejected(&validator, &string_amount, "an amount written as a string");
}
