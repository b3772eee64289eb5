//! Every detector's thresholds and windows, through the engine with in-memory state (no
//! services): a firing case and a near miss each, plus replays and duplicates.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use promo_attribution::attribution::decide;
use promo_attribution::codes::CodeTable;
use promo_attribution::codes::load::{read_codes_lenient, read_partners};
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::detectors::state::Op;
use promo_attribution::detectors::{
    DetectorSettings, Detectors, MemoryState, ProgramSettings, Thresholds,
};
use promo_attribution::engine::{Engine, Outputs};
use promo_attribution::schema::parse_order;
use promo_attribution::settings::Settings;
use serde_json::{Value, json};

const CODES: &str = "\
Promo Code,Program Id,Media Id,Type,Credit Rule,Usage Limit,Customer Limit
LIMIT3,1,100,TRACKING,ALWAYS,3,
ONCE,1,100,TRACKING,ALWAYS,1,
PERCUST,1,100,TRACKING,ALWAYS,,1
LEAK,1,100,TRACKING,INVOLVED,,
RADIO,1,100,TRACKING,ALWAYS,,
HOT,1,100,TRACKING,ALWAYS,,
A1,1,101,TRACKING,ALWAYS,,
A2,1,101,TRACKING,ALWAYS,,
A3,1,101,TRACKING,ALWAYS,,
SELF,1,200,TRACKING,ALWAYS,,
";
const PARTNERS: &str = "\
Partner Id,Status,Identity Hashes
200,ACTIVE,e-hash;d-hash
";

struct Run {
    engine: Engine,
    detectors: Detectors,
    state: MemoryState,
    table: CodeTable,
    settings: Settings,
}

impl Run {
    fn new(thresholds: Thresholds) -> Run {
        let (entries, problems) = read_codes_lenient(CODES.as_bytes(), "codes");
        assert!(problems.is_empty(), "{problems:?}");
        let partners = read_partners(PARTNERS.as_bytes(), "partners").expect("partners");
        let table = CodeTable::build(entries, partners, "v1", "codes", BuildOptions::default())
            .expect("table");
        let detector_settings = DetectorSettings {
            enabled: true,
            customer_hmac_key: "test-key-0123456789".into(),
            defaults: thresholds,
            ..DetectorSettings::default()
        };
        let mut settings = Settings::default();
        settings.store.key_prefix = "t:".into();
        settings.detectors = detector_settings;
        Run {
            engine: Engine::new(Arc::new(settings.clone())),
            detectors: Detectors::new(&settings.detectors, &settings.store.key_prefix),
            state: MemoryState::new(),
            table,
            settings,
        }
    }

    /// Decides one order; returns the conversion and the alerts of the kinds the detectors add.
    fn order(&mut self, record: &Value) -> (Value, Vec<Value>) {
        let bytes = serde_json::to_vec(record).expect("json");
        let mut outputs = Outputs::default();
        self.engine
            .run(&self.table, Some(&mut self.state), &[&bytes], &mut outputs)
            .expect("memory state");
        let outcome = outputs.iter().next().expect("one outcome");
        assert!(outcome.result.is_ok(), "decided: {:?}", outcome.result);
        let mut values = outcome
            .writes()
            .map(|w| serde_json::from_slice::<Value>(w.value).expect("json"));
        let conversion = values.next().expect("a conversion");
        (conversion, values.collect())
    }

    /// The kinds and counts of the alerts an order raises.
    fn kinds(&mut self, record: &Value) -> Vec<(String, u64)> {
        self.order(record)
            .1
            .iter()
            .map(|a| {
                (
                    a["kind"].as_str().unwrap_or("").to_string(),
                    a["count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

fn order(id: &str, minute: i64, codes: &[&str]) -> Value {
    let at = chrono::DateTime::from_timestamp(1_779_998_400 + minute * 60, 0).expect("time");
    json!({
        "order_id": id,
        "program_id": "1",
        "event_type": "sale",
        "event_time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "promo_codes": codes,
    })
}

fn with(mut record: Value, key: &str, value: Value) -> Value {
    record[key] = value;
    record
}

fn only(thresholds: impl FnOnce(&mut Thresholds)) -> Thresholds {
    let mut t = Thresholds {
        cold_code_use: false,
        velocity: false,
        usage_limit: false,
        customer_limit: false,
        enumeration: false,
        unknown_rate: false,
        self_referral: false,
        ..Thresholds::default()
    };
    thresholds(&mut t);
    t
}

fn kind(name: &str, count: u64) -> (String, u64) {
    (name.to_string(), count)
}

#[test]
fn usage_limit_fires_past_the_limit_then_at_doubling_counts() {
    let mut run = Run::new(only(|t| t.usage_limit = true));
    let mut fired = Vec::new();
    for n in 0..8 {
        // Out of event-time order on purpose: the first redeemer is the earliest event.
        let minute = if n == 1 { -5 } else { n };
        fired.push(run.kinds(&order(&format!("o{n}"), minute, &["LIMIT3"])));
    }
    assert!(fired[..3].iter().all(Vec::is_empty), "{fired:?}");
    assert_eq!(fired[3], [kind("USAGE_LIMIT_EXCEEDED", 1)]);
    assert_eq!(fired[4], [kind("USAGE_LIMIT_EXCEEDED", 2)]);
    assert!(fired[5].is_empty(), "3 is not a power of two");
    assert_eq!(fired[6], [kind("USAGE_LIMIT_EXCEEDED", 4)]);
    assert!(fired[7].is_empty());
    let (_, replayed) = run.order(&order("o6", 6, &["LIMIT3"]));
    assert_eq!(
        replayed[0]["count"], 4,
        "a replay returns the recorded counts"
    );
    assert_eq!(replayed[0]["detail"]["first_redeemer_order_id"], "o1");
    assert_eq!(replayed[0]["order_ids"][0], "o1");
}

#[test]
fn single_use_codes_and_invalidation_on_breach() {
    let mut run = Run::new(only(|t| {
        t.usage_limit = true;
        t.invalidate_on_limit_breach = true;
    }));
    let (first, alerts) = run.order(&order("a", 0, &["ONCE"]));
    assert!(alerts.is_empty());
    assert_eq!(first["status"], "CREDITED");
    let (second, alerts) = run.order(&order("b", 1, &["ONCE"]));
    assert_eq!(alerts[0]["kind"], "SINGLE_USE_CODE_REUSED");
    assert_eq!(alerts[0]["severity"], "high");
    assert_eq!(alerts[0]["order_ids"], json!(["a", "b"]));
    assert_eq!(second["status"], "INVALID");
    assert_eq!(second["invalid_reason"], "USAGE_LIMIT_EXCEEDED");
    assert_eq!(second["invalid_partner_id"], "100");
    assert_eq!(second["partner_id"], Value::Null);
}

#[test]
fn customer_limit_counts_per_customer_and_hides_the_identity() {
    let mut run = Run::new(only(|t| t.customer_limit = true));
    let customer = |id: &str| json!({"id": id});
    let first = with(
        order("a", 0, &["PERCUST"]),
        "customer",
        customer("alice@example.com"),
    );
    let other = with(
        order("b", 1, &["PERCUST"]),
        "customer",
        customer("bob@example.com"),
    );
    let again = with(
        order("c", 2, &["PERCUST"]),
        "customer",
        customer("alice@example.com"),
    );
    assert!(run.order(&first).1.is_empty());
    assert!(
        run.order(&other).1.is_empty(),
        "another customer is a near miss"
    );
    let (conversion, alerts) = run.order(&again);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["kind"], "CUSTOMER_LIMIT_EXCEEDED");
    assert_eq!(alerts[0]["order_ids"], json!(["a", "c"]));
    let text = alerts[0].to_string();
    assert!(!text.contains("alice"), "{text}");
    assert_eq!(
        alerts[0]["detail"]["customer_ref"].as_str().map(str::len),
        Some(32)
    );
    assert_eq!(conversion["status"], "CREDITED", "alert only by default");
}

#[test]
fn cold_share_fires_above_the_share_with_enough_uses_per_window() {
    let mut run = Run::new(only(|t| {
        t.cold_code_use = true;
        t.cold_min_uses = 4;
        t.cold_share_percent = 50;
        t.cold_window_secs = 3600;
        t.cold_exempt_codes = vec!["LI:RADIO".into()];
    }));
    let click = |mut o: Value| {
        o["touchpoints"] = json!([{"partner_id": "100", "click_id": "c", "ts": o["event_time"]}]);
        o
    };
    // Near miss: 2 of 4 cold is 50 %, not above.
    let near = [
        click(order("n1", 0, &["LEAK"])),
        click(order("n2", 1, &["LEAK"])),
        order("n3", 2, &["LEAK"]),
        order("n4", 3, &["LEAK"]),
    ];
    for o in &near {
        assert!(run.kinds(o).is_empty());
    }
    // The next hour is a new window: 3 of 4 cold fires on the fourth use.
    let fire = [
        order("f1", 60, &["LEAK"]),
        click(order("f2", 61, &["LEAK"])),
        order("f3", 62, &["LEAK"]),
    ];
    for o in &fire {
        assert!(run.kinds(o).is_empty());
    }
    let (_, alerts) = run.order(&order("f4", 63, &["LEAK"]));
    assert_eq!(alerts[0]["kind"], "COLD_CODE_USE_RATE");
    assert_eq!(alerts[0]["count"], 3);
    assert_eq!(alerts[0]["order_ids"], json!(["f1", "f3", "f4"]));
    assert_eq!(alerts[0]["detail"]["uses"], 4);
    for n in 0..6 {
        assert!(
            run.kinds(&order(&format!("r{n}"), n, &["RADIO"]))
                .is_empty(),
            "exempt"
        );
    }
}

#[test]
fn velocity_compares_a_bucket_with_its_own_baseline() {
    let mut run = Run::new(only(|t| {
        t.velocity = true;
        t.velocity_bucket_secs = 3600;
        t.velocity_baseline_buckets = 2;
        t.velocity_factor = 2;
        t.velocity_floor = 3;
    }));
    // Baseline: 4 uses over the two previous hours (mean 2); hour 3 needs > 4 uses and >= 3.
    for n in 0..4 {
        assert!(
            run.kinds(&order(&format!("b{n}"), 60 + n * 30, &["HOT"]))
                .is_empty()
        );
    }
    for n in 0..4 {
        assert!(
            run.kinds(&order(&format!("s{n}"), 180 + n, &["HOT"]))
                .is_empty(),
            "4 is not > 2 x 2"
        );
    }
    assert_eq!(
        run.kinds(&order("s4", 185, &["HOT"])),
        [kind("CODE_VELOCITY_SPIKE", 5)]
    );
    // A late use in an old hour counts there (1 use, under the floor), not in the current one.
    assert!(run.kinds(&order("late", 30, &["HOT"])).is_empty());
    assert!(
        run.kinds(&order("s5", 186, &["HOT"])).is_empty(),
        "6 is no new power of two"
    );
}

#[test]
fn enumeration_counts_distinct_codes_per_actor_and_window() {
    let mut run = Run::new(only(|t| {
        t.enumeration = true;
        t.enumeration_distinct_codes = 3;
        t.enumeration_unknown_codes = 2;
    }));
    let device = |o: Value| with(o, "risk", json!({"device_hash": "dev-1"}));
    assert!(run.kinds(&device(order("a", 0, &["A1"]))).is_empty());
    assert!(
        run.kinds(&device(order("b", 1, &["A2", "a1"]))).is_empty(),
        "2 distinct"
    );
    assert!(
        run.kinds(&with(
            order("x", 2, &["A3"]),
            "risk",
            json!({"device_hash": "dev-2"})
        ))
        .is_empty()
    );
    let (_, alerts) = run.order(&device(order("c", 3, &["A3"])));
    assert_eq!(alerts[0]["kind"], "CODE_ENUMERATION_SUSPECTED");
    assert_eq!(alerts[0]["count"], 3);
    assert_eq!(alerts[0]["order_ids"], json!(["a", "b", "c"]));
    assert_eq!(alerts[0]["detail"]["actor_kind"], "device");
    assert_eq!(
        alerts[0]["detail"]["codes"],
        json!(["LI:A1", "LI:A2", "LI:A3"])
    );
    // Unknown codes: two guesses from one IP in a later window.
    let ip = |o: Value| with(o, "risk", json!({"ip_hash": "ip-1"}));
    assert!(run.kinds(&ip(order("g1", 120, &["GUESS1"]))).is_empty());
    assert_eq!(
        run.kinds(&ip(order("g2", 121, &["GUESS2"]))),
        [kind("CODE_ENUMERATION_SUSPECTED", 2)]
    );
}

#[test]
fn unknown_rate_needs_enough_orders_and_a_share_above_the_threshold() {
    let mut run = Run::new(only(|t| {
        t.unknown_rate = true;
        t.unknown_min_orders = 4;
        t.unknown_share_percent = 50;
    }));
    for (n, codes) in [["NOPE1"], ["A1"], ["NOPE2"], ["A2"]].iter().enumerate() {
        assert!(
            run.kinds(&order(&format!("m{n}"), n as i64, codes))
                .is_empty(),
            "2 of 4 is not above 50 %"
        );
    }
    assert!(
        run.kinds(&order("none", 5, &[])).is_empty(),
        "orders without codes do not count"
    );
    let (_, alerts) = run.order(&order("m4", 6, &["nope1"]));
    assert_eq!(alerts[0]["kind"], "UNKNOWN_CODE_RATE");
    assert_eq!(alerts[0]["count"], 3);
    assert_eq!(
        alerts[0]["detail"]["top_unknown_codes"][0],
        json!({"code": "NOPE1", "orders": 2})
    );
    assert_eq!(alerts[0]["order_ids"], json!(["m0", "m2", "m4"]));
}

#[test]
fn self_referral_compares_the_credited_partners_hashes() {
    let mut run = Run::new(only(|t| t.self_referral = true));
    let customer = json!({"email_sha256": "E-HASH"});
    let (_, alerts) = run.order(&with(
        order("a", 0, &["SELF"]),
        "customer",
        customer.clone(),
    ));
    assert_eq!(alerts[0]["kind"], "SELF_REFERRAL_SUSPECTED");
    assert_eq!(alerts[0]["severity"], "low");
    assert_eq!(alerts[0]["other_partner_id"], "200");
    assert!(!alerts[0].to_string().contains("E-HASH"));
    let both = with(
        with(order("b", 1, &["SELF"]), "customer", customer),
        "risk",
        json!({"device_hash": "d-hash"}),
    );
    assert_eq!(run.order(&both).1[0]["severity"], "high");
    let stranger = with(
        order("c", 2, &["SELF"]),
        "customer",
        json!({"email_sha256": "other"}),
    );
    assert!(run.kinds(&stranger).is_empty());
    let uncredited = with(
        order("d", 3, &["A1"]),
        "customer",
        json!({"email_sha256": "e-hash"}),
    );
    assert!(
        run.kinds(&uncredited).is_empty(),
        "partner 101 has no such hash"
    );
}

#[test]
fn duplicates_are_invalid_and_replays_are_identical() {
    let mut run = Run::new(Thresholds::default());
    let original = order("dup", 0, &["LIMIT3"]);
    let first = run.order(&original);
    assert_eq!(
        run.order(&original),
        first,
        "a replay gives the same outputs"
    );
    let changed = with(original, "amount", json!(5.0));
    let (conversion, alerts) = run.order(&changed);
    assert_eq!(conversion["status"], "INVALID");
    assert_eq!(conversion["invalid_reason"], "DUPLICATE_ORDER_ID");
    assert_eq!(conversion["invalid_partner_id"], "100");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["kind"], "DUPLICATE_ORDER_ID");
    assert_eq!(alerts[0]["detail"]["decided_status"], "CREDITED");
    let mut off = Run::new(Thresholds {
        duplicate_order_id: false,
        ..Thresholds::default()
    });
    off.order(&order("dup", 0, &["LIMIT3"]));
    assert_eq!(off.order(&changed).0["status"], "CREDITED");
}

/// The Redis Cluster hash tag of a key: the text between its first `{` and the next `}`.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

#[test]
fn every_key_of_a_step_shares_the_programs_hash_slot() {
    let mut run = Run::new(Thresholds::default());
    let record = with(
        with(
            order("k", 0, &["LIMIT3", "PERCUST", "LEAK", "NOPE"]),
            "customer",
            json!({"id": "c", "email_sha256": "e"}),
        ),
        "risk",
        json!({"device_hash": "d", "ip_hash": "i"}),
    );
    let bytes = serde_json::to_vec(&record).expect("json");
    let order = parse_order(&bytes, &run.settings.limits).expect("valid");
    let decision = decide(&bytes, &order, &run.table, &run.settings.attribution);
    for (prefix, program, tag) in [("t:", "1", "1"), ("{promo}:", "1", "promo")] {
        run.detectors = Detectors::new(run.detectors.settings(), prefix);
        let plan = run.detectors.plan(&order, &decision, &run.table);
        assert_eq!(plan.step.group, program);
        let keys: Vec<&str> = std::iter::once(plan.step.memo_key.as_str())
            .chain(plan.step.ops.iter().map(|op| match op {
                Op::Add { key, .. } | Op::Tally { key, .. } => key.as_str(),
            }))
            .collect();
        assert!(keys.len() > 8, "{keys:?}");
        for key in keys {
            assert_eq!(hash_tag(key), Some(tag), "{key}");
        }
    }
}

#[test]
fn program_settings_published_with_the_table_override_the_defaults() {
    let mut run = Run::new(only(|t| t.usage_limit = true));
    let quiet = ProgramSettings {
        usage_limit: Some(false),
        ..ProgramSettings::default()
    };
    run.table = std::mem::replace(
        &mut run.table,
        CodeTable::build(
            Vec::new(),
            Vec::new(),
            "empty",
            "none",
            BuildOptions::default(),
        )
        .expect("empty table"),
    )
    .with_program_settings([("1".to_string(), quiet)].into_iter().collect());
    for n in 0..3 {
        assert!(run.kinds(&order(&format!("p{n}"), n, &["ONCE"])).is_empty());
    }
}
