use super::*;

fn conversion(
    event: &str,
    order: &str,
    status: &str,
    reason: Option<&str>,
    table: &str,
) -> Vec<u8> {
    serde_json::json!({
        "event_id": event,
        "order_id": order,
        "program_id": "1001",
        "status": status,
        "invalid_reason": reason,
        "code_table_version": table,
    })
    .to_string()
    .into_bytes()
}

fn alert(id: &str, kind: &str, order: &str, table: &str) -> Vec<u8> {
    serde_json::json!({
        "alert_id": id,
        "kind": kind,
        "program_id": "1001",
        "order_ids": [order],
        "code_table_version": table,
    })
    .to_string()
    .into_bytes()
}

fn decided(offset: i64, event: &str, conversion: Vec<u8>, alerts: Vec<Vec<u8>>) -> Replayed {
    Replayed {
        partition: 0,
        offset,
        event_id: event.into(),
        outcome: Ok(ReplayedDecision { conversion, alerts }),
    }
}

fn rejected(offset: i64, event: &str, reason: &str) -> Replayed {
    Replayed {
        partition: 0,
        offset,
        event_id: event.into(),
        outcome: Err(Rejected {
            reason: reason.into(),
        }),
    }
}

fn letter(offset: i64, reason: &str) -> DeadLetterRef {
    DeadLetterRef {
        topic: "orders".into(),
        partition: 0,
        offset,
        reason: reason.into(),
    }
}

fn labels(audit: &Audit) -> Vec<&'static str> {
    audit.findings.iter().map(|f| f.verdict.label()).collect()
}

#[test]
fn equal_bytes_are_identical_and_repeats_collapse() {
    let c = conversion("e1", "A", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![c.clone(), c.clone()],
        ..Written::default()
    };
    let audit = audit("orders", &[decided(0, "e1", c, vec![])], &written);
    assert_eq!(labels(&audit), ["identical"]);
    assert_eq!(audit.summary.identical, 1);
    assert_eq!(audit.summary.differences(), 0);
}

#[test]
fn only_the_table_differs_is_told_apart_from_a_changed_decision() {
    let same_worker = conversion("e1", "A", "CREDITED", None, "2-bb");
    let same_replay = conversion("e1", "A", "CREDITED", None, "1-aa");
    let changed_worker = conversion("e2", "B", "INVALID", Some("CODE_EXPIRED"), "2-bb");
    let changed_replay = conversion("e2", "B", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![same_worker, changed_worker],
        ..Written::default()
    };
    let replayed = [
        decided(0, "e1", same_replay, vec![]),
        decided(1, "e2", changed_replay, vec![]),
    ];
    let audit = audit("orders", &replayed, &written);
    assert_eq!(
        labels(&audit),
        ["same decision, other table", "decision changed"]
    );
    assert_eq!(
        audit.findings[0].verdict,
        Verdict::OtherTable("\"2-bb\"".into(), "\"1-aa\"".into())
    );
    let Verdict::Changed(changes) = &audit.findings[1].verdict else {
        panic!("{:?}", audit.findings[1]);
    };
    assert_eq!(
        changes,
        &[
            "invalid_reason \"CODE_EXPIRED\" → null",
            "status \"INVALID\" → \"CREDITED\"",
            "table \"2-bb\" → \"1-aa\"",
        ]
    );
    assert_eq!(audit.findings[1].order_id.as_deref(), Some("B"));
    assert_eq!((audit.summary.other_table, audit.summary.changed), (1, 1));
    assert!(audit.findings[1].to_string().contains("order B"));
}

#[test]
fn detector_decisions_are_not_comparable_never_equal() {
    let worker = conversion("e1", "A", "INVALID", Some("DUPLICATE_ORDER_ID"), "1-aa");
    let replay = conversion("e1", "A", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![worker],
        alerts: Some(vec![alert("x", "DUPLICATE_ORDER_ID", "A", "1-aa")]),
        dead_letters: None,
    };
    let audit = audit("orders", &[decided(0, "e1", replay, vec![])], &written);
    assert_eq!(labels(&audit), ["not comparable"]);
    assert_eq!(audit.summary.not_comparable, 1);
    assert_eq!(audit.summary.detector_alerts, 1);
    assert_eq!(audit.summary.differences(), 0);
}

#[test]
fn detector_alerts_are_counted_and_not_compared() {
    let c = conversion("e1", "A", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![c.clone()],
        alerts: Some(vec![alert("v", "CODE_VELOCITY_SPIKE", "A", "1-aa")]),
        dead_letters: None,
    };
    let replayed = [
        decided(0, "e1", c.clone(), vec![]),
        decided(1, "e1", c, vec![]),
    ];
    let audit = audit("orders", &replayed, &written);
    assert_eq!(labels(&audit), ["identical", "identical"]);
    assert_eq!(
        audit.summary.detector_alerts, 1,
        "one alert, however many records name it"
    );
}

#[test]
fn per_order_alerts_are_compared_both_ways() {
    let c = conversion("e1", "A", "CREDITED", None, "1-aa");
    let mine = alert("m", "MULTIPLE_PARTNER_CODES", "A", "1-aa");
    let theirs = alert("t", "EXPIRED_CODE_USED", "A", "1-aa");
    let written = Written {
        conversions: vec![c.clone()],
        alerts: Some(vec![theirs]),
        dead_letters: None,
    };
    let audit = audit(
        "orders",
        &[decided(0, "e1", c.clone(), vec![mine])],
        &written,
    );
    let Verdict::Changed(changes) = &audit.findings[0].verdict else {
        panic!("{:?}", audit.findings[0]);
    };
    assert_eq!(
        changes,
        &[
            "alert MULTIPLE_PARTNER_CODES not written by the worker",
            "alert EXPIRED_CODE_USED written by the worker, not raised now",
        ]
    );
    // Without the alerts topic the conversion alone decides.
    let unread = Written {
        conversions: vec![c.clone()],
        ..Written::default()
    };
    let same_alert = alert("m", "MULTIPLE_PARTNER_CODES", "A", "1-aa");
    let audit = super::audit("orders", &[decided(0, "e1", c, vec![same_alert])], &unread);
    assert_eq!(labels(&audit), ["identical"]);
}

#[test]
fn an_alert_from_another_table_alone_is_other_table() {
    let worker = conversion("e1", "A", "CREDITED", None, "2-bb");
    let replay = conversion("e1", "A", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![worker],
        alerts: Some(vec![alert("m", "AMBIGUOUS_CODE_MATCH", "A", "2-bb")]),
        dead_letters: None,
    };
    let mine = alert("m", "AMBIGUOUS_CODE_MATCH", "A", "1-aa");
    let audit = audit("orders", &[decided(0, "e1", replay, vec![mine])], &written);
    assert_eq!(labels(&audit), ["same decision, other table"]);
}

#[test]
fn missing_extra_and_dead_letters() {
    let c = conversion("e1", "A", "CREDITED", None, "1-aa");
    let stray = conversion("e3", "C", "CREDITED", None, "1-aa");
    let written = Written {
        conversions: vec![stray],
        alerts: None,
        dead_letters: Some(vec![
            letter(0, "too_many_codes"),
            letter(4, "malformed_json"),
        ]),
    };
    let replayed = [
        decided(0, "e1", c, vec![]),
        rejected(1, "e2", "malformed_json"),
        rejected(2, "e3", "malformed_json"),
        rejected(4, "e4", "malformed_json"),
    ];
    let audit = audit("orders", &replayed, &written);
    assert_eq!(labels(&audit), ["missing", "missing", "extra", "identical"]);
    assert_eq!(
        audit.findings[0].verdict,
        Verdict::Missing("the worker dead-lettered it (too_many_codes)".into())
    );
    assert_eq!(audit.summary.differences(), 3);
    // Dead letters of another input topic do not count.
    let other = audit_other_topic(&replayed[3..], &written);
    assert_eq!(labels(&other), ["missing"]);
}

fn audit_other_topic(replayed: &[Replayed], written: &Written) -> Audit {
    audit("other", replayed, written)
}

#[test]
fn a_rejection_without_the_dead_letter_topic_is_unchecked_and_reasons_compare() {
    let replayed = [rejected(0, "e1", "too_many_codes")];
    let unread = audit("orders", &replayed, &Written::default());
    assert_eq!(labels(&unread), ["unchecked"]);
    assert_eq!(unread.summary.differences(), 0);
    let written = Written {
        dead_letters: Some(vec![letter(0, "malformed_json")]),
        ..Written::default()
    };
    let changed = audit("orders", &replayed, &written);
    assert_eq!(
        changed.findings[0].verdict,
        Verdict::Changed(vec![
            "dead-letter reason malformed_json → too_many_codes".into()
        ])
    );
}

#[test]
fn unreadable_worker_records_are_counted() {
    let written = Written {
        conversions: vec![b"not json".to_vec()],
        alerts: Some(vec![b"{}".to_vec()]),
        dead_letters: None,
    };
    let audit = audit("orders", &[], &written);
    assert_eq!(audit.summary.unreadable, 2);
    assert!(audit.summary.to_string().contains("2 unreadable"));
}

#[test]
fn classify_reports_reformatted_json_as_a_difference() {
    assert_eq!(
        classify(
            br#"{"a":1,"code_table_version":"1"}"#,
            br#"{"a": 1,"code_table_version":"1"}"#
        ),
        Verdict::Changed(vec!["same fields, other bytes".into()])
    );
    assert!(matches!(classify(b"x", b"y"), Verdict::Changed(_)));
}
