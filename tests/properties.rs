//! Properties that must hold for any input, not just the cases someone thought of.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use promo_attribution::attribution::decide;
use promo_attribution::codes::CodeTable;
use promo_attribution::codes::load::read_codes;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::schema::parse_order;
use promo_attribution::settings::Settings;
use proptest::prelude::*;
use serde_json::{Value, json};

fn table_of(codes: &[String]) -> CodeTable {
    let mut csv = String::from("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n");
    for (i, code) in codes.iter().enumerate() {
        csv.push_str(&format!("{code},P,owner{i},TRACKING,WINNER,LI\n"));
    }
    let entries = read_codes(csv.as_bytes(), "codes.csv").expect("generated codes are valid");
    CodeTable::build(
        entries,
        Vec::new(),
        "v",
        "codes.csv",
        BuildOptions::default(),
    )
    .expect("no duplicates")
}

/// Re-cases each character at random and pads with the kinds of invisible characters checkout
/// forms leave behind.
fn disguise(code: &str, case_bits: u64, left: usize, right: usize) -> String {
    const PADDING: [&str; 5] = [" ", "\u{00A0}", "\u{200B}", "\t", "\u{FEFF}"];
    let body: String = code
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if case_bits >> (i % 64) & 1 == 1 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    format!(
        "{}{body}{}",
        PADDING[left % PADDING.len()].repeat(left % 3),
        PADDING[right % PADDING.len()].repeat(right % 3)
    )
}

proptest! {
    #[test]
    fn exact_match_ignores_case_and_padding(
        codes in prop::collection::hash_set("[A-Z0-9]{4,20}", 1..20),
        pick in any::<prop::sample::Index>(),
        case_bits in any::<u64>(),
        left in 0usize..10,
        right in 0usize..10,
    ) {
        let codes: Vec<String> = codes.into_iter().collect();
        let table = table_of(&codes);
        let program = table.program("P").expect("program exists");
        let index = pick.index(codes.len());
        let entered = disguise(&codes[index], case_bits, left, right);
        let hit = table.lookup(program, &entered, &mut Vec::new()).map(|m| m.entry);
        prop_assert_eq!(hit, Some(index as u32), "entered {:?}", entered);
    }

    #[test]
    fn decisions_do_not_depend_on_touchpoint_order(
        clicks in prop::collection::vec(
            (0usize..4, 0i64..60 * 24 * 40, prop::option::of(0usize..3), any::<bool>()),
            0..8,
        ),
        codes in prop::collection::vec(0usize..6, 0..3),
        rotation in 0usize..8,
    ) {
        let known = ["AAA1", "BBB2", "CCC3", "DDD4"].map(String::from);
        let table = table_of(&known);
        let entered: Vec<String> = codes.iter().map(|&i| known.get(i).cloned().unwrap_or_else(|| format!("UNKNOWN{i}"))).collect();
        // Distinct minutes, so the only tie rule (listed last wins) never comes into play.
        let mut seen = std::collections::HashSet::new();
        let touchpoints: Vec<Value> = clicks
            .iter()
            .enumerate()
            .filter(|(_, (_, minutes, _, _))| seen.insert(*minutes))
            .map(|(i, (owner, minutes, group, view))| {
                let ts = chrono::DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").expect("fixed") - chrono::TimeDelta::minutes(*minutes);
                let group = group.map(|g| ["PREFERRED", "STANDARD", "NON_PREFERRED"][g]);
                json!({"partner_id": format!("owner{owner}"), "click_id": format!("c{i}"), "ts": ts.to_rfc3339(),
                       "kind": if *view { "view" } else { "click" }, "credit_group": group})
            })
            .collect();
        let mut rotated = touchpoints.clone();
        if !rotated.is_empty() {
            let by = rotation % rotated.len();
            rotated.rotate_left(by);
            rotated.reverse();
        }
        let decide_json = |tps: &[Value]| {
            let record = json!({"order_id": "o", "program_id": "P", "event_type": "sale",
                                "event_time": "2026-06-15T12:00:00Z", "promo_codes": entered, "touchpoints": tps}).to_string();
            let settings = Settings::default();
            let order = parse_order(record.as_bytes(), &settings.limits).expect("valid order");
            let mut conversion = serde_json::to_value(decide(record.as_bytes(), &order, &table, &settings.attribution).conversion).expect("serializes");
            // The id follows the input bytes, which differ by construction.
            conversion["event_id"] = Value::Null;
            conversion
        };
        prop_assert_eq!(decide_json(&touchpoints), decide_json(&rotated));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_classified(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let settings = Settings::default();
        if let Err(err) = parse_order(&bytes, &settings.limits) {
            prop_assert!(!err.reason().is_empty());
        }
    }
}
