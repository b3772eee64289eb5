//! Every branch of the crediting rules, table-driven, through the public library API with no
//! services. The table below is one program's code table; each case is one order against it.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use promo_attribution::attribution::decide;
use promo_attribution::codes::CodeTable;
use promo_attribution::codes::load::{read_codes, read_partners};
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::schema::parse_order;
use promo_attribution::settings::{ForeignCodeRule, Settings};
use serde_json::Value;

const CODES: &str = "\
Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode,Deal Id,Active Start Date,Active End Date,Timezone,State,Priority
ALWAYS1,P,A,TRACKING,ALWAYS,LI,D1,,,,,
INVOLVED1,P,A,TRACKING,INVOLVED,LI,,,,,,
WINNER1,P,A,TRACKING,WINNER,LI,,,,,,
BWIN,P,B,TRACKING,WINNER,LI,,,,,,
BALWAYS,P,B,TRACKING,ALWAYS,LI,,,,,,
WINDOW,P,A,TRACKING,ALWAYS,LI,,2026-06-01,2026-07-01,America/New_York,,
PAUSED,P,A,TRACKING,ALWAYS,LI,,,2020-01-01,,EXPIRED,
STAFF,P,,RESTRICTED,,,,,,,,
OLDSTAFF,P,,RESTRICTED,,,,,2020-01-01,,,
LAPSED,P,L,TRACKING,ALWAYS,LI,,,,,,
SLEEPY,P,S,TRACKING,ALWAYS,LI,,,,,,
^(SUMMER).*,P,C,TRACKING,WINNER,RE,,,,,,
^(SUM).*,P,A,TRACKING,ALWAYS,RE,,,,,,-1
OTHERPROG,Q,A,TRACKING,ALWAYS,LI,,,,,,
SUMMIT,P,B,TRACKING,ALWAYS,LI,,,,,,
";

const PARTNERS: &str = "\
Partner Id,Status,Contract Start,Contract End,Referral Window Days,Credit Group
A,ACTIVE,,,30,PREFERRED
B,ACTIVE,,,30,PREFERRED
STD,ACTIVE,,,30,STANDARD
NP,ACTIVE,,,30,NON_PREFERRED
L,ACTIVE,2020-01-01,2026-01-01,30,PREFERRED
S,INACTIVE,,,30,PREFERRED
";

fn table() -> CodeTable {
    let entries = read_codes(CODES.as_bytes(), "codes.csv").expect("codes parse");
    let partners = read_partners(PARTNERS.as_bytes(), "partners.csv").expect("partners parse");
    CodeTable::build(
        entries,
        partners,
        "test-v1",
        "codes.csv",
        BuildOptions::default(),
    )
    .expect("table builds")
}

/// A touchpoint: (partner, click id, minutes before the event time; negative = after).
type Click<'a> = (&'a str, &'a str, i64);

fn order_json(event_time: &str, codes: &[&str], clicks: &[Click<'_>]) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(event_time).expect("test event time");
    let touchpoints: Vec<Value> = clicks
        .iter()
        .map(|(partner, click, minutes)| {
            let ts = at - chrono::TimeDelta::minutes(*minutes);
            serde_json::json!({"partner_id": partner, "click_id": click, "ts": ts.to_rfc3339()})
        })
        .collect();
    serde_json::json!({
        "order_id": "O1", "program_id": "P", "event_type": "sale", "event_time": event_time,
        "promo_codes": codes, "touchpoints": touchpoints,
    })
    .to_string()
}

struct Outcome {
    conversion: Value,
    alerts: Vec<Value>,
}

impl Outcome {
    fn alert_kinds(&self) -> Vec<&str> {
        self.alerts
            .iter()
            .filter_map(|a| a["kind"].as_str())
            .collect()
    }
}

fn run_with(table: &CodeTable, settings: &Settings, record: &str) -> Outcome {
    let order = parse_order(record.as_bytes(), &settings.limits).expect("test order is valid");
    let decision = decide(record.as_bytes(), &order, table, &settings.attribution);
    Outcome {
        conversion: serde_json::to_value(&decision.conversion).expect("serializes"),
        alerts: decision
            .alerts
            .iter()
            .map(|a| serde_json::to_value(a).expect("serializes"))
            .collect(),
    }
}

const NOW: &str = "2026-06-15T12:00:00Z";

/// One order and what must come of it. `expect` lists, space-separated, the conversion's
/// `status basis partner_id invalid_reason invalid_partner_id overridden_partner_id code.code_id`,
/// with `-` for null.
type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [Click<'static>],
    ForeignCodeRule,
    &'static str,
    &'static [&'static str],
);

const INV: ForeignCodeRule = ForeignCodeRule::Invalidate;
const CCW: ForeignCodeRule = ForeignCodeRule::CreditClickWinner;
const LATER: &str = "2026-08-01T00:00:00Z";

#[rustfmt::skip]
const CASES: &[Case] = &[
    ("always, no click", NOW, &["ALWAYS1"], &[], INV, "CREDITED CODE_ALWAYS A - - - LI:ALWAYS1", &[]),
    ("always beats another partner's winning click", NOW, &["always1"], &[("B", "b1", 5)], INV, "CREDITED CODE_ALWAYS A - - B LI:ALWAYS1", &[]),
    ("always with its owner winning overrides nobody", NOW, &["ALWAYS1"], &[("A", "a1", 5)], INV, "CREDITED CODE_ALWAYS A - - - LI:ALWAYS1", &[]),
    ("involved owner credited though not the winner", NOW, &["INVOLVED1"], &[("A", "a1", 60), ("B", "b1", 5)], INV, "CREDITED CODE_INVOLVED A - - - LI:INVOLVED1", &[]),
    ("involved owner absent, other winner: foreign code", NOW, &["INVOLVED1"], &[("B", "b1", 5)], INV, "INVALID - - CODE_OWNED_BY_OTHER_PARTNER B - LI:INVOLVED1", &["CODE_USED_BY_UNAUTHORIZED_PARTNER"]),
    ("involved owner absent, no click", NOW, &["INVOLVED1"], &[], INV, "INVALID - - CODE_OWNER_NOT_INVOLVED A - LI:INVOLVED1", &[]),
    ("winner owner wins", NOW, &["WINNER1"], &[("B", "b1", 60), ("A", "a1", 5)], INV, "CREDITED CODE_WINNER A - - - LI:WINNER1", &[]),
    ("winner owner involved but loses: foreign code", NOW, &["WINNER1"], &[("A", "a1", 60), ("B", "b1", 5)], INV, "INVALID - - CODE_OWNED_BY_OTHER_PARTNER B - LI:WINNER1", &["CODE_USED_BY_UNAUTHORIZED_PARTNER"]),
    ("winner code, no click", NOW, &["WINNER1"], &[], INV, "INVALID - - CODE_OWNER_NOT_WINNER A - LI:WINNER1", &[]),
    ("foreign code, credit_click_winner", NOW, &["WINNER1"], &[("B", "b1", 5)], CCW, "CREDITED CLICK B - - - LI:WINNER1", &["CODE_USED_BY_UNAUTHORIZED_PARTNER"]),
    ("expired code falls back to the click", LATER, &["WINDOW"], &[("B", "b1", 5)], INV, "CREDITED CLICK B - - - LI:WINDOW", &["EXPIRED_CODE_USED"]),
    ("inactive code, no click: owner's conversion invalid", NOW, &["PAUSED"], &[], INV, "INVALID - - CODE_INACTIVE A - LI:PAUSED", &["INACTIVE_CODE_USED"]),
    ("restricted code with a click invalidates the winner", NOW, &["STAFF"], &[("B", "b1", 5)], INV, "INVALID - - CODE_RESTRICTED B - LI:STAFF", &["RESTRICTED_CODE_USED"]),
    ("restricted code without a click", NOW, &["STAFF"], &[], INV, "INVALID - - CODE_RESTRICTED - - LI:STAFF", &["RESTRICTED_CODE_USED"]),
    ("expired restricted code with a click is still restricted", NOW, &["OLDSTAFF"], &[("B", "b1", 5)], INV, "INVALID - - CODE_RESTRICTED B - LI:OLDSTAFF", &["EXPIRED_CODE_USED"]),
    ("expired restricted code without a click keeps its own reason", NOW, &["OLDSTAFF"], &[], INV, "INVALID - - CODE_EXPIRED - - LI:OLDSTAFF", &["EXPIRED_CODE_USED"]),
    ("owner contract ended", NOW, &["LAPSED"], &[], INV, "INVALID - - PARTNER_CONTRACT_INACTIVE L - LI:LAPSED", &["CODE_OWNER_CONTRACT_INACTIVE"]),
    ("owner inactive, click winner credited", NOW, &["SLEEPY"], &[("B", "b1", 5)], INV, "CREDITED CLICK B - - - LI:SLEEPY", &["CODE_OWNER_CONTRACT_INACTIVE"]),
    ("no code, click wins", NOW, &[], &[("B", "b1", 5)], INV, "CREDITED CLICK B - - - -", &[]),
    ("unknown code, no click", NOW, &["NOPE"], &[], INV, "UNATTRIBUTED - - - - - -", &[]),
    ("codes of another program are unknown", NOW, &["OTHERPROG"], &[], INV, "UNATTRIBUTED - - - - - -", &[]),
    ("always code chosen over an earlier winner code", NOW, &["WINNER1", "BALWAYS"], &[("A", "a1", 5)], INV, "CREDITED CODE_ALWAYS B - - A LI:BALWAYS", &["MULTIPLE_PARTNER_CODES"]),
    ("winner's own code chosen over an earlier code", NOW, &["WINNER1", "BWIN"], &[("B", "b1", 5)], INV, "CREDITED CODE_WINNER B - - - LI:BWIN", &["MULTIPLE_PARTNER_CODES"]),
    ("earlier entered code chosen when nothing else separates", NOW, &["BWIN", "WINNER1"], &[], INV, "INVALID - - CODE_OWNER_NOT_WINNER B - LI:BWIN", &["MULTIPLE_PARTNER_CODES"]),
    ("a valid code is chosen over an earlier invalid one", NOW, &["PAUSED", "BWIN"], &[("B", "b1", 5)], INV, "CREDITED CODE_WINNER B - - - LI:BWIN", &["INACTIVE_CODE_USED"]),
    ("first entered invalid code gives the reason", NOW, &["LAPSED", "PAUSED"], &[], INV, "INVALID - - PARTNER_CONTRACT_INACTIVE L - LI:LAPSED", &["CODE_OWNER_CONTRACT_INACTIVE", "INACTIVE_CODE_USED"]),
    ("regex match with a lower-priority regex of another owner", NOW, &["SUMMER24"], &[("C", "c1", 5)], INV, "CREDITED CODE_WINNER C - - - RE:^(SUMMER).*", &["AMBIGUOUS_CODE_MATCH"]),
    ("regex is case-sensitive", NOW, &["summer24"], &[], INV, "UNATTRIBUTED - - - - - -", &[]),
    ("exact is case-insensitive, the other owner's regex is not", NOW, &["summit"], &[], INV, "CREDITED CODE_ALWAYS B - - - LI:SUMMIT", &[]),
    ("a regex alone", NOW, &["SUMBODY"], &[], INV, "CREDITED CODE_ALWAYS A - - - RE:^(SUM).*", &[]),
    ("exact beats another owner's regex, and says so", NOW, &["SUMMIT"], &[], INV, "CREDITED CODE_ALWAYS B - - - LI:SUMMIT", &["AMBIGUOUS_CODE_MATCH"]),
    ("start is inclusive, read in the row's zone", "2026-06-01T04:00:00Z", &["WINDOW"], &[], INV, "CREDITED CODE_ALWAYS A - - - LI:WINDOW", &[]),
    ("before the start", "2026-06-01T03:59:59Z", &["WINDOW"], &[], INV, "INVALID - - CODE_NOT_YET_ACTIVE A - LI:WINDOW", &["NOT_YET_ACTIVE_CODE_USED"]),
    ("last second before the end", "2026-07-01T03:59:59Z", &["WINDOW"], &[], INV, "CREDITED CODE_ALWAYS A - - - LI:WINDOW", &[]),
    ("end is exclusive", "2026-07-01T04:00:00Z", &["WINDOW"], &[], INV, "INVALID - - CODE_EXPIRED A - LI:WINDOW", &["EXPIRED_CODE_USED"]),
];

#[test]
fn every_rule_branch() {
    let table = table();
    let mut failures = Vec::new();
    for &(name, event_time, codes, clicks, foreign, expect, alerts) in CASES {
        let mut settings = Settings::default();
        settings.attribution.foreign_code = foreign;
        let outcome = run_with(&table, &settings, &order_json(event_time, codes, clicks));
        let c = &outcome.conversion;
        let got: Vec<&str> = [
            "status",
            "basis",
            "partner_id",
            "invalid_reason",
            "invalid_partner_id",
            "overridden_partner_id",
        ]
        .iter()
        .map(|field| c[*field].as_str())
        .chain([c["code"]["code_id"].as_str()])
        .map(|v| v.unwrap_or("-"))
        .collect();
        let mut want_alerts = alerts.to_vec();
        let mut got_alerts = outcome.alert_kinds();
        want_alerts.sort_unstable();
        got_alerts.sort_unstable();
        if got.join(" ") != expect || got_alerts != want_alerts {
            failures.push(format!(
                "{name}:\n  want {expect} alerts {want_alerts:?}\n  got  {} alerts {got_alerts:?}",
                got.join(" ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn ambiguity_is_reported_even_when_precedence_decides() {
    let table = table();
    let outcome = run_with(
        &table,
        &Settings::default(),
        &order_json(NOW, &["SUMMER1"], &[]),
    );
    let ambiguity = outcome
        .alerts
        .iter()
        .find(|a| a["kind"] == "AMBIGUOUS_CODE_MATCH")
        .expect("ambiguity alert");
    let matched: Vec<&str> = ambiguity["detail"]["matches"]
        .as_array()
        .expect("matches list")
        .iter()
        .filter_map(|m| m["code_id"].as_str())
        .collect();
    assert_eq!(matched, ["RE:^(SUMMER).*", "RE:^(SUM).*"]);
    assert_eq!(ambiguity["severity"], "medium");
}

#[test]
fn referral_window_edges_and_click_kinds() {
    let table = table();
    let settings = Settings::default();
    let thirty_days = 30 * 24 * 60;
    let winner = |clicks: &[Click<'_>]| {
        run_with(&table, &settings, &order_json(NOW, &[], clicks)).conversion["winning_click"]["click_id"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        winner(&[("B", "edge", thirty_days)]).as_deref(),
        Some("edge"),
        "window boundary is inclusive"
    );
    assert_eq!(
        winner(&[("B", "old", thirty_days + 1)]),
        None,
        "one minute past the window"
    );
    assert_eq!(
        winner(&[("B", "future", -1)]),
        None,
        "a click after the order does not count"
    );
    assert_eq!(
        winner(&[("B", "same", 0)]).as_deref(),
        Some("same"),
        "a click at the order time counts"
    );
    assert_eq!(winner(&[("S", "sleepy", 5)]), None, "inactive partner");
    assert_eq!(
        winner(&[("L", "lapsed", 5)]),
        None,
        "contract over at the event time"
    );
    let view = order_json(NOW, &[], &[]).replace(
        r#""touchpoints":[]"#,
        r#""touchpoints":[{"partner_id":"B","click_id":"v","ts":"2026-06-15T11:00:00Z","kind":"view"}]"#,
    );
    assert_eq!(
        run_with(&table, &settings, &view).conversion["winning_click"],
        Value::Null,
        "views never win"
    );
}

#[test]
fn winner_selection_by_group_then_time_then_position() {
    let table = table();
    let settings = Settings::default();
    let winner = |record: String| {
        let outcome = run_with(&table, &settings, &record);
        (
            outcome.conversion["winning_click"]["click_id"]
                .as_str()
                .map(str::to_string),
            outcome.conversion["involved_partners"].clone(),
        )
    };
    // A Preferred click beats a later Standard one.
    let (w, involved) = winner(order_json(
        NOW,
        &[],
        &[("A", "pref", 60), ("STD", "std", 1), ("NP", "np", 0)],
    ));
    assert_eq!(w.as_deref(), Some("pref"));
    assert_eq!(involved, serde_json::json!(["A", "NP", "STD"]));
    // Within one group the latest wins.
    assert_eq!(
        winner(order_json(
            NOW,
            &[],
            &[("B", "late", 1), ("A", "early", 60)]
        ))
        .0
        .as_deref(),
        Some("late")
    );
    // Same group and time: the one listed last.
    assert_eq!(
        winner(order_json(
            NOW,
            &[],
            &[("A", "first", 5), ("B", "second", 5)]
        ))
        .0
        .as_deref(),
        Some("second")
    );
    // A touchpoint's own credit group overrides its partner's.
    let demoted = order_json(NOW, &[], &[("A", "a", 1), ("STD", "s", 60)]).replacen(
        r#""partner_id":"A""#,
        r#""partner_id":"A","credit_group":"NON_PREFERRED""#,
        1,
    );
    assert_eq!(winner(demoted).0.as_deref(), Some("s"));
}

#[test]
fn outputs_are_deterministic_and_ids_follow_the_input() {
    let table = table();
    let settings = Settings::default();
    let record = order_json(NOW, &["INVOLVED1", "STAFF"], &[("B", "b1", 5)]);
    let first = run_with(&table, &settings, &record);
    let again = run_with(&table, &settings, &record);
    assert_eq!(first.conversion.to_string(), again.conversion.to_string());
    assert_eq!(first.alerts, again.alerts);
    assert_eq!(
        first.conversion["event_id"].as_str().map(str::len),
        Some(32)
    );
    let other = run_with(&table, &settings, &record.replace("\"O1\"", "\"O2\""));
    assert_ne!(first.conversion["event_id"], other.conversion["event_id"]);
    assert_ne!(first.alerts[0]["alert_id"], other.alerts[0]["alert_id"]);
    assert_eq!(first.conversion["code_table_version"], "test-v1");
}

#[test]
fn duplicate_entered_codes_raise_one_alert() {
    let table = table();
    let outcome = run_with(
        &table,
        &Settings::default(),
        &order_json(NOW, &["PAUSED", "paused "], &[]),
    );
    assert_eq!(outcome.alert_kinds(), ["INACTIVE_CODE_USED"]);
}
