//! Unit tests of the report's arithmetic: `aggregate.rs` over hand-made conversion records.

use super::*;

/// A conversion record with the fields the report reads; `extra` replaces or adds fields.
fn conversion(event_id: &str, status: &str, extra: &str) -> Vec<u8> {
    let (basis, partner, reason, invalid_partner) = match status {
        "CREDITED" => (r#""CODE_WINNER""#, r#""P1""#, "null", "null"),
        "INVALID" => ("null", "null", r#""CODE_EXPIRED""#, r#""P1""#),
        _ => ("null", "null", "null", "null"),
    };
    let code = if status == "UNATTRIBUTED" {
        "null".to_string()
    } else {
        r#"{"entered":"anna10","code_id":"LI:ANNA10","match_type":"EXACT","owner_partner_id":"P1","credit_policy":"WINNER","deal_id":null}"#.to_string()
    };
    let base = format!(
        r#"{{"schema_version":1,"event_id":"{event_id}","order_id":"o-{event_id}","program_id":"1001","event_type":"sale","event_time":"2026-05-10T12:00:00Z","amount":10.00,"discount":1,"currency":"USD","status":"{status}","basis":{basis},"partner_id":{partner},"invalid_reason":{reason},"invalid_partner_id":{invalid_partner},"overridden_partner_id":null,"code":{code},"winning_click":null,"involved_partners":[],"unknown_codes":[],"code_table_version":"v1"}}"#
    );
    let mut value: serde_json::Value = serde_json::from_str(&base).expect("valid base");
    let extra: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).expect("extra");
    for (k, v) in extra.as_object().expect("object") {
        value[k] = v.clone();
    }
    // Money must keep its text: splice the number texts in by hand rather than through Value.
    serde_json::to_vec(&value).expect("serializes")
}

/// Like [`conversion`], with the amount's exact text.
fn with_amount(event_id: &str, amount: &str, currency: &str) -> Vec<u8> {
    let record = String::from_utf8(conversion(event_id, "CREDITED", "")).expect("utf8");
    record
        .replacen(r#""amount":10.0"#, &format!(r#""amount":{amount}"#), 1)
        .replacen(
            r#""currency":"USD""#,
            &format!(r#""currency":{currency}"#),
            1,
        )
        .into_bytes()
}

fn id(n: u32) -> String {
    format!("{n:032x}")
}

fn run(by: By, records: &[Vec<u8>]) -> (Vec<Row>, Stats) {
    let mut agg = Aggregator::new(by, Selection::default());
    for record in records {
        agg.add(record).expect("counts");
    }
    agg.finish()
}

#[test]
fn repeats_count_once_and_differing_repeats_are_conflicts() {
    let first = conversion(&id(1), "CREDITED", "");
    let other = conversion(&id(1), "CREDITED", r#""partner_id":"P9""#);
    let (rows, stats) = run(By::Code, &[first.clone(), first.clone(), other, first]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].credited, 1);
    assert_eq!(rows[0].revenue.to_string(), "10.0");
    assert_eq!((stats.records, stats.repeats, stats.conflicting), (4, 2, 1));
}

#[test]
fn currencies_never_mix_and_null_currency_is_its_own_row() {
    let records = [
        with_amount(&id(1), "19.99", r#""USD""#),
        with_amount(&id(2), "0.1", r#""USD""#),
        with_amount(&id(3), "5", r#""EUR""#),
        with_amount(&id(4), "7.5", "null"),
    ];
    let (rows, _) = run(By::Code, &records);
    let by_currency: Vec<(Option<&str>, String, u64)> = rows
        .iter()
        .map(|r| (r.currency.as_deref(), r.revenue.to_string(), r.credited))
        .collect();
    assert_eq!(
        by_currency,
        [
            (None, "7.5".to_string(), 1),
            (Some("EUR"), "5".to_string(), 1),
            (Some("USD"), "20.09".to_string(), 2),
        ]
    );
}

#[test]
fn decimals_are_exact() {
    let texts = [
        "0.1",
        "0.2",
        "1e-7",
        "123456789012345678901234567890.12",
        "100.10",
    ];
    let records: Vec<Vec<u8>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| with_amount(&id(i as u32), t, r#""USD""#))
        .collect();
    let (rows, _) = run(By::Code, &records);
    assert_eq!(
        rows[0].revenue.to_string(),
        "123456789012345678901234567990.5200001"
    );
}

#[test]
fn invalid_by_reason_and_the_three_views() {
    let records = [
        conversion(&id(1), "CREDITED", ""),
        conversion(&id(2), "INVALID", ""),
        conversion(&id(3), "INVALID", r#""invalid_reason":"CODE_INACTIVE""#),
        conversion(&id(4), "INVALID", ""),
        conversion(&id(5), "UNATTRIBUTED", ""),
        conversion(&id(6), "CREDITED", r#""basis":"CLICK","partner_id":"P2""#),
    ];
    let (code, stats) = run(By::Code, &records);
    assert_eq!(code.len(), 1, "{code:?}");
    let row = &code[0];
    assert_eq!(row.subject.as_deref(), Some("LI:ANNA10"));
    assert_eq!(row.owner_partner_id.as_deref(), Some("P1"));
    // The CLICK-credited conversion names the code but was not credited through it.
    assert_eq!((row.credited, row.invalid), (1, 3));
    assert_eq!(
        row.invalid_by_reason,
        BTreeMap::from([("CODE_EXPIRED", 2), ("CODE_INACTIVE", 1)])
    );
    assert_eq!(
        (stats.credited, stats.invalid, stats.unattributed),
        (2, 3, 1)
    );

    let (partner, _) = run(By::Partner, &records);
    let summary: Vec<(Option<&str>, u64, u64, String)> = partner
        .iter()
        .map(|r| {
            (
                r.subject.as_deref(),
                r.credited,
                r.invalid,
                r.revenue.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("P1"), 1, 3, "10.0".to_string()),
            (Some("P2"), 1, 0, "10.0".to_string()),
        ]
    );

    let (reason, _) = run(By::Reason, &records);
    let summary: Vec<(Option<&str>, u64, String, String)> = reason
        .iter()
        .map(|r| {
            (
                r.subject.as_deref(),
                r.invalid,
                r.revenue.to_string(),
                r.discount.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("CODE_EXPIRED"), 2, "20.0".to_string(), "2".to_string()),
            (
                Some("CODE_INACTIVE"),
                1,
                "10.0".to_string(),
                "1".to_string()
            ),
        ]
    );
}

#[test]
fn missing_money_counts_without_amount_and_old_records_are_read() {
    let old = String::from_utf8(conversion(&id(1), "CREDITED", "")).expect("utf8");
    let old = old
        .replace(r#""amount":10.0,"#, "")
        .replace(r#""discount":1,"#, "")
        .replace(r#""currency":"USD","#, "");
    let (rows, _) = run(By::Code, &[old.into_bytes()]);
    assert_eq!(rows[0].currency, None);
    assert_eq!((rows[0].credited, rows[0].without_amount), (1, 1));
    assert_eq!(rows[0].revenue, Decimal::ZERO);
}

#[test]
fn selection_by_program_and_event_time() {
    let at = |t: &str| parse_rfc3339(t).expect("time");
    let selection = Selection {
        program: Some("1001".into()),
        from: Some(at("2026-05-10T12:00:00Z")),
        to: Some(at("2026-05-11T00:00:00Z")),
    };
    let mut agg = Aggregator::new(By::Code, selection);
    let records = [
        conversion(&id(1), "CREDITED", ""),
        conversion(
            &id(2),
            "CREDITED",
            r#""event_time":"2026-05-10T14:00:00+02:00""#,
        ),
        conversion(&id(3), "CREDITED", r#""event_time":"2026-05-11T00:00:00Z""#),
        conversion(&id(4), "CREDITED", r#""program_id":"2002""#),
    ];
    for record in &records {
        agg.add(record).expect("counts");
    }
    let (rows, stats) = agg.finish();
    // 14:00+02:00 is 12:00Z, inside; the upper bound is exclusive.
    assert_eq!(rows[0].credited, 2);
    assert_eq!(stats.outside, 2);
}

#[test]
fn bad_records_are_reported_and_overflow_stops() {
    let mut agg = Aggregator::new(By::Code, Selection::default());
    assert!(matches!(
        agg.add(b"{not json"),
        Err(AddError::Unreadable(_))
    ));
    assert!(matches!(
        agg.add(br#"{"event_id":"x"}"#),
        Err(AddError::Unreadable(_))
    ));
    assert_eq!(agg.stats().unreadable, 2);
    let huge = with_amount(&id(1), "99999999999999999999999999999999999999", r#""USD""#);
    agg.add(&huge).expect("fits alone");
    let err = agg
        .add(&with_amount(&id(2), "1", r#""USD""#))
        .expect_err("overflow");
    assert!(err.to_string().contains("sums exactly"), "{err}");
}
