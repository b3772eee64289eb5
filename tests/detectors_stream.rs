//! The stateful detectors through the real pipeline (the local broker, the worker, Redis):
//! every detector fires on its scenario and stays quiet on a near miss, and the stream's
//! conversions and alerts equal the offline mode's, byte for byte. Replays and outages are in
//! `detectors_replay.rs`.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use promo_attribution::settings::Settings;
use serde_json::{Value, json};
use support::redis::{detector_sets, offline_run, outputs_after, produce, shared};
use support::{InProcessWorker, Names, assert_same_records, field, order_ids};

const DEADLINE: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(30);

const CODES: &str = "\
Promo Code,Program Id,Media Id,Type,Credit Rule,Usage Limit,Customer Limit
LIMIT3,pU,100,TRACKING,ALWAYS,3,
LIMIT3B,pU,100,TRACKING,ALWAYS,3,
ONCE,pU,100,TRACKING,ALWAYS,1,
ONCEB,pU,100,TRACKING,ALWAYS,1,
PERCUST,pC,100,TRACKING,ALWAYS,,1
PERCUST2,pC,100,TRACKING,ALWAYS,,2
LEAK,pK,300,TRACKING,INVOLVED,,
LEAK2,pK,300,TRACKING,INVOLVED,,
HOT,pV,500,TRACKING,ALWAYS,,
WARM,pV,500,TRACKING,ALWAYS,,
E1,pE,100,TRACKING,ALWAYS,,
E2,pE,100,TRACKING,ALWAYS,,
E3,pE,100,TRACKING,ALWAYS,,
N1,pN,100,TRACKING,ALWAYS,,
M1,pM,100,TRACKING,ALWAYS,,
SELF,pS,900,TRACKING,ALWAYS,,
DUP1,pD,100,TRACKING,ALWAYS,,
";
const PARTNERS: &str = "\
Partner Id,Status,Identity Hashes
900,ACTIVE,e-hash;d-hash
";

/// Thresholds small enough for a handful of orders per scenario.
const THRESHOLDS: [&str; 13] = [
    "detectors.defaults.cold_window_secs=3600",
    "detectors.defaults.cold_min_uses=4",
    "detectors.defaults.cold_share_percent=50",
    "detectors.defaults.velocity_bucket_secs=3600",
    "detectors.defaults.velocity_baseline_buckets=2",
    "detectors.defaults.velocity_factor=2",
    "detectors.defaults.velocity_floor=5",
    "detectors.defaults.enumeration_window_secs=3600",
    "detectors.defaults.enumeration_distinct_codes=3",
    "detectors.defaults.enumeration_unknown_codes=2",
    "detectors.defaults.unknown_window_secs=3600",
    "detectors.defaults.unknown_min_orders=4",
    "detectors.defaults.unknown_share_percent=50",
];

/// Builds the scenario orders; minutes count from an hour boundary.
struct Scenario {
    records: Vec<Vec<u8>>,
}

impl Scenario {
    fn add(&mut self, id: &str, program: &str, minute: i64, codes: &[&str], extra: Value) -> Value {
        let at = chrono::DateTime::from_timestamp(1_780_272_000 + minute * 60, 0).expect("time");
        let mut order = json!({
            "order_id": id,
            "program_id": program,
            "event_type": "sale",
            "event_time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "promo_codes": codes,
        });
        if let (Some(order), Some(extra)) = (order.as_object_mut(), extra.as_object()) {
            order.extend(extra.clone());
        }
        self.records.push(serde_json::to_vec(&order).expect("json"));
        order
    }
}

fn owner_click(partner: &str, minute: i64) -> Value {
    let at = chrono::DateTime::from_timestamp(1_780_272_000 + minute * 60, 0).expect("time");
    json!({"touchpoints": [{"partner_id": partner, "click_id": "c", "ts": at.to_rfc3339()}]})
}

fn scenario_orders() -> Vec<Vec<u8>> {
    let mut s = Scenario {
        records: Vec::new(),
    };
    let none = json!({});
    // Usage limits, one use an hour so no window-based detector joins in.
    for n in 0..4 {
        s.add(&format!("u{n}"), "pU", n * 60, &["LIMIT3"], none.clone());
    }
    for n in 0..3 {
        s.add(&format!("ub{n}"), "pU", n * 60, &["LIMIT3B"], none.clone());
    }
    s.add("once-a", "pU", 0, &["ONCE"], none.clone());
    s.add("once-b", "pU", 60, &["ONCE"], none.clone());
    s.add("onceb-a", "pU", 0, &["ONCEB"], none.clone());
    // Customer limits.
    let customer = |id: &str| json!({"customer": {"id": id}});
    s.add("c-a1", "pC", 0, &["PERCUST"], customer("alice"));
    s.add("c-b", "pC", 60, &["PERCUST"], customer("bob"));
    s.add("c-a2", "pC", 120, &["PERCUST"], customer("alice"));
    s.add("c-d1", "pC", 0, &["PERCUST2"], customer("dan"));
    s.add("c-d2", "pC", 60, &["PERCUST2"], customer("dan"));
    // Cold share: LEAK 3 of 4 cold, LEAK2 2 of 4 cold.
    for (n, warm) in [false, true, false, false].iter().enumerate() {
        let extra = if *warm {
            owner_click("300", n as i64)
        } else {
            none.clone()
        };
        s.add(&format!("k{n}"), "pK", n as i64, &["LEAK"], extra);
    }
    for (n, warm) in [true, true, false, false].iter().enumerate() {
        let extra = if *warm {
            owner_click("300", n as i64)
        } else {
            none.clone()
        };
        s.add(&format!("kb{n}"), "pK", n as i64, &["LEAK2"], extra);
    }
    // Velocity: HOT goes from 1 use an hour to 5; WARM from 3 to 5 (not above twice the mean).
    for (code, per_hour) in [("HOT", [1, 1, 5]), ("WARM", [3, 3, 5])] {
        for (hour, uses) in per_hour.iter().enumerate() {
            for n in 0..*uses {
                let minute = hour as i64 * 60 + n;
                let id = format!("v-{code}-{hour}-{n}");
                s.add(&id, "pV", minute, &[code], owner_click("500", minute));
            }
        }
    }
    // Enumeration: dev-1 tries three codes within the hour, dev-2 two.
    let device = |d: &str| json!({"risk": {"device_hash": d}});
    for (n, code) in ["E1", "E2", "E3"].iter().enumerate() {
        s.add(&format!("e1-{n}"), "pE", n as i64, &[code], device("dev-1"));
    }
    for (n, code) in ["E1", "E2"].iter().enumerate() {
        s.add(&format!("e2-{n}"), "pE", n as i64, &[code], device("dev-2"));
    }
    // Unknown-code rate: 3 of 4 unknown in pN, 2 of 4 in pM.
    for (n, code) in ["NOPE1", "N1", "NOPE2", "NOPE3"].iter().enumerate() {
        s.add(&format!("n{n}"), "pN", n as i64, &[code], none.clone());
    }
    for (n, code) in ["NOPE1", "M1", "NOPE2", "M1"].iter().enumerate() {
        s.add(&format!("m{n}"), "pM", n as i64, &[code], none.clone());
    }
    // Self-referral: partner 900's own email hash; then a stranger.
    s.add(
        "s-self",
        "pS",
        0,
        &["SELF"],
        json!({"customer": {"email_sha256": "E-HASH"}}),
    );
    s.add(
        "s-other",
        "pS",
        60,
        &["SELF"],
        json!({"customer": {"email_sha256": "x-hash"}}),
    );
    // Duplicates: X again with other content; Y again unchanged (a plain repeat).
    s.add("dup-x", "pD", 0, &["DUP1"], none.clone());
    s.add("dup-y", "pD", 60, &["DUP1"], none.clone());
    s.add("dup-x", "pD", 0, &["DUP1"], json!({"amount": 10.0}));
    s.add("dup-y", "pD", 60, &["DUP1"], none);
    s.records
}

fn write_tables(dir: &Path) -> (String, String) {
    let codes = dir.join("codes.csv");
    let partners = dir.join("partners.csv");
    std::fs::write(&codes, CODES).expect("write codes");
    std::fs::write(&partners, PARTNERS).expect("write partners");
    (codes.display().to_string(), partners.display().to_string())
}

fn kinds_by_program(alerts: &[Vec<u8>]) -> BTreeSet<(String, String, String)> {
    alerts
        .iter()
        .map(|a| {
            let v: Value = serde_json::from_slice(a).expect("alert json");
            let code = v["code"].as_str().unwrap_or("-").to_string();
            (field(a, "kind"), field(a, "program_id"), code)
        })
        .collect()
}

fn alert_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(support::repo().join("schema/alert.schema.json"))
        .expect("alert schema");
    let schema: Value = serde_json::from_str(&text).expect("schema json");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("alert schema compiles")
}

#[test]
fn every_detector_fires_on_its_scenario_and_not_on_its_near_miss() {
    let names = Names::new("detectors");
    names.create_topics(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (codes, partners) = write_tables(dir.path());
    let (url, prefix) = shared("detectors");
    let mut extra = detector_sets(&url, &prefix);
    extra.extend(THRESHOLDS.iter().map(|s| s.to_string()));
    extra.extend([
        format!("codes.codes_file={codes}"),
        format!("codes.partners_file={partners}"),
        "kafka.batch_max_records=7".into(),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let settings = names.settings(&names.transactional_id, &extra);
    let records = scenario_orders();
    let (expected_conversions, expected_alerts) = offline_run(&records, &settings);

    let worker = InProcessWorker::start(settings.clone());
    produce(&names.input, &records);
    let (conversions, alerts) = outputs_after(
        &names,
        &order_ids(&records),
        &expected_alerts,
        DEADLINE,
        || {
            assert!(worker.stop(STOP).is_ok(), "worker drains");
        },
    );
    assert_same_records(
        &conversions,
        &expected_conversions,
        "conversions vs offline",
    );
    assert_same_records(&alerts, &expected_alerts, "alerts vs offline");

    let validator = alert_validator();
    for alert in &alerts {
        let value: Value = serde_json::from_slice(alert).expect("json");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {value}");
    }

    let seen = kinds_by_program(&alerts);
    let has = |kind: &str, program: &str, code: &str| {
        seen.contains(&(kind.to_string(), program.to_string(), code.to_string()))
    };
    // (kind, program, code, whether it fires): each detector's scenario, then its near miss.
    let expectations = [
        ("USAGE_LIMIT_EXCEEDED", "pU", "LIMIT3", true),
        ("USAGE_LIMIT_EXCEEDED", "pU", "LIMIT3B", false),
        ("SINGLE_USE_CODE_REUSED", "pU", "ONCE", true),
        ("SINGLE_USE_CODE_REUSED", "pU", "ONCEB", false),
        ("CUSTOMER_LIMIT_EXCEEDED", "pC", "PERCUST", true),
        ("CUSTOMER_LIMIT_EXCEEDED", "pC", "PERCUST2", false),
        ("COLD_CODE_USE_RATE", "pK", "LEAK", true),
        ("COLD_CODE_USE_RATE", "pK", "LEAK2", false),
        ("CODE_VELOCITY_SPIKE", "pV", "HOT", true),
        ("CODE_VELOCITY_SPIKE", "pV", "WARM", false),
        ("CODE_ENUMERATION_SUSPECTED", "pE", "-", true),
        ("UNKNOWN_CODE_RATE", "pN", "-", true),
        ("UNKNOWN_CODE_RATE", "pM", "-", false),
        ("SELF_REFERRAL_SUSPECTED", "pS", "SELF", true),
        ("DUPLICATE_ORDER_ID", "pD", "-", true),
    ];
    for (kind, program, code, fires) in expectations {
        assert_eq!(
            has(kind, program, code),
            fires,
            "{kind} on {code} in {program}: expected {}; seen {seen:?}",
            if fires {
                "an alert"
            } else {
                "none (near miss)"
            }
        );
    }
    let enumeration: Vec<Value> = alerts
        .iter()
        .map(|a| serde_json::from_slice::<Value>(a).expect("json"))
        .filter(|a| a["kind"] == "CODE_ENUMERATION_SUSPECTED")
        .collect();
    assert_eq!(enumeration.len(), 1, "dev-2 (two codes) is the near miss");
    assert_eq!(enumeration[0]["order_ids"], json!(["e1-0", "e1-1", "e1-2"]));
    let self_referrals = seen
        .iter()
        .filter(|(k, _, _)| k == "SELF_REFERRAL_SUSPECTED")
        .count();
    assert_eq!(self_referrals, 1, "the stranger is the near miss");
    let duplicates: Vec<String> = conversions
        .iter()
        .filter(|c| field(c, "status") == "INVALID")
        .filter(|c| {
            serde_json::from_slice::<Value>(c).expect("json")["invalid_reason"]
                == "DUPLICATE_ORDER_ID"
        })
        .map(|c| field(c, "order_id"))
        .collect();
    assert_eq!(
        duplicates,
        ["dup-x"],
        "an unchanged repeat is not a duplicate"
    );
    let text = alerts
        .iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect::<String>();
    for raw in ["alice", "dev-1", "E-HASH"] {
        assert!(
            !text.contains(raw),
            "a raw customer identifier in an alert: {raw}"
        );
    }
}

/// `schema/examples/alerts/<KIND>.json` (shown in docs/alerts.md) are the last update of each
/// detector kind in the offline run of the scenarios; `UPDATE_EXAMPLES=1` rewrites them.
#[test]
fn detector_alert_examples_are_real_engine_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (codes, partners) = write_tables(dir.path());
    let mut settings = Settings::default();
    settings.detectors.enabled = true;
    settings.detectors.customer_hmac_key = support::redis::TEST_HMAC_KEY.into();
    settings.codes.codes_file = Some(codes.into());
    settings.codes.partners_file = Some(partners.into());
    let mut text = String::new();
    for set in THRESHOLDS {
        let (key, value) = set.split_once('=').expect("key=value");
        let key = key.trim_start_matches("detectors.defaults.");
        text.push_str(&format!("{key} = {value}\n"));
    }
    settings.detectors.defaults = toml::from_str(&text).expect("thresholds");
    let (_, alerts) = offline_run(&scenario_orders(), &settings);
    let validator = alert_validator();
    let examples = support::repo().join("schema/examples/alerts");
    let update = std::env::var_os("UPDATE_EXAMPLES").is_some();
    let kinds = [
        "COLD_CODE_USE_RATE",
        "CODE_VELOCITY_SPIKE",
        "USAGE_LIMIT_EXCEEDED",
        "SINGLE_USE_CODE_REUSED",
        "CUSTOMER_LIMIT_EXCEEDED",
        "CODE_ENUMERATION_SUSPECTED",
        "UNKNOWN_CODE_RATE",
        "SELF_REFERRAL_SUSPECTED",
        "DUPLICATE_ORDER_ID",
    ];
    for kind in kinds {
        let last: Value = alerts
            .iter()
            .map(|a| serde_json::from_slice::<Value>(a).expect("json"))
            .filter(|a| a["kind"] == kind)
            .max_by_key(|a| a["count"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} in the scenarios"));
        let errors: Vec<String> = validator
            .iter_errors(&last)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{kind}: {errors:?}");
        let path = examples.join(format!("{kind}.json"));
        if update {
            std::fs::create_dir_all(&examples).expect("examples dir");
            let pretty = serde_json::to_string_pretty(&last).expect("json");
            std::fs::write(&path, pretty + "\n").expect("write example");
        }
        let stored: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| panic!("{} missing; run with UPDATE_EXAMPLES=1", path.display()));
        assert_eq!(
            stored,
            last,
            "{} is stale; run with UPDATE_EXAMPLES=1",
            path.display()
        );
    }
}
