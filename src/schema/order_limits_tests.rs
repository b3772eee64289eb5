//! Length limits on identifiers and rejection messages without values (issue 13, item 4).

use super::*;

const BASE: &str =
    r#""order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z""#;

fn rejected(fields: &str) -> OrderError {
    let raw = format!("{{{BASE},{fields}}}");
    parse_order(raw.as_bytes(), &InputLimits::default()).expect_err("must be rejected")
}

#[test]
fn every_identifier_has_a_length_limit() {
    let long = "X".repeat(257);
    let tp = |partner: &str, click: &str| {
        format!(
            r#""touchpoints":[{{"partner_id":"a","click_id":"c","ts":"2026-01-01T00:00:00Z"}},{{"partner_id":"{partner}","click_id":"{click}","ts":"2026-01-01T00:00:00Z"}}]"#
        )
    };
    let cases = [
        (format!(r#""event_id":"{long}""#), "event_id"),
        (format!(r#""customer":{{"id":"{long}"}}"#), "customer.id"),
        (
            format!(r#""customer":{{"email_sha256":"{long}"}}"#),
            "customer.email_sha256",
        ),
        (
            format!(r#""risk":{{"device_hash":"{long}"}}"#),
            "risk.device_hash",
        ),
        (tp(&long, "c"), "touchpoints[1].partner_id"),
        (tp("a", &long), "touchpoints[1].click_id"),
    ];
    for (fields, field) in cases {
        let err = rejected(&fields);
        assert_eq!(err.reason(), "field_too_long", "{field}");
        assert_eq!(
            err.to_string(),
            format!("field {field} is 257 bytes, over the limit of 256 (limits.max_id_bytes)")
        );
    }
    let raw = format!(
        r#"{{"order_id":"{}","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z"}}"#,
        "O".repeat(60_000)
    );
    let err = parse_order(raw.as_bytes(), &InputLimits::default()).expect_err("60 KB order_id");
    assert_eq!(err.reason(), "field_too_long");
    assert!(err.to_string().starts_with("field order_id is 60000 bytes"));
    let err = rejected(r#""currency":"EURO-DOLLARS""#);
    assert_eq!(
        err.to_string(),
        "field currency is 12 bytes, over the limit of 8 (limits.max_currency_bytes)"
    );
    // At the limit is fine.
    let at_limit = format!(
        r#"{{{BASE},"event_id":"{}","currency":"EUR"}}"#,
        "E".repeat(256)
    );
    assert!(parse_order(at_limit.as_bytes(), &InputLimits::default()).is_ok());
}

#[test]
fn rejections_name_the_field_and_rule_but_never_the_value() {
    let secret = "4111111111";
    for (fields, says) in [
        (
            format!(r#""customer":{{"id":{secret}}}"#),
            "customer.id: invalid type: integer, expected a string",
        ),
        (
            format!(r#""customer":{{"id":{secret}.5}}"#),
            "customer.id: invalid type: floating point, expected a string",
        ),
        (
            format!(r#""amount":"{secret}""#),
            "amount: a string, expected a JSON number",
        ),
        (
            format!(r#""amount":{secret}e400"#),
            "amount: a number out of range, expected a JSON number",
        ),
        (
            format!(
                r#""touchpoints":[{{"partner_id":"a","click_id":"c","ts":"2026-01-01T00:00:00Z","kind":"{secret}"}}]"#
            ),
            "touchpoints[0].kind: unknown variant, expected `click` or `view`",
        ),
        (
            format!(r#""risk":{{"ip_hash":true,"device_hash":"{secret}"}}"#),
            "risk.ip_hash: invalid type: boolean, expected a string",
        ),
    ] {
        let err = rejected(&fields);
        let text = err.to_string();
        assert_eq!(err.reason(), "schema_violation", "{text}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains(secret), "the value is echoed: {text}");
    }
    let err = rejected(&format!(
        r#""touchpoints":[{{"partner_id":"a","click_id":"c","ts":"{secret}"}}]"#
    ));
    assert_eq!(err.reason(), "bad_timestamp");
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(err.to_string().contains("touchpoints[0].ts"), "{err}");
}

/// Issue 13, item 9: orders read instants by the same rule as code tables and the CLIs: a leap
/// second at 23:59:60 UTC is a time, year 0 is not.
#[test]
fn order_timestamps_follow_the_table_rules() {
    let at = |time: &str| {
        format!(r#"{{"order_id":"o","program_id":"p","event_type":"s","event_time":"{time}"}}"#)
    };
    let record = at("2016-12-31T23:59:60Z");
    let leap = parse_order(record.as_bytes(), &InputLimits::default())
        .expect("a leap second is a valid RFC 3339 time");
    assert_eq!(
        leap.event_time.to_rfc3339(),
        "2016-12-31T23:59:59.999999999+00:00"
    );
    for bad in ["0000-01-01T00:00:00Z", "2016-12-31T12:00:60Z"] {
        let err = parse_order(at(bad).as_bytes(), &InputLimits::default()).expect_err(bad);
        assert_eq!(err.reason(), "bad_timestamp", "{bad}");
    }
}
