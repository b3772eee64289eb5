//! Synthetic order events (~300 bytes, 1-3 codes: 60% exact hits in random case, 20% regex
//! hits, 20% unknown; 0-3 touchpoints, some views, half the clicks from a code's owner) for the
//! table `Synthetic` generates.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use promo_attribution::codes::CodeTable;
use serde_json::{Value, json};

use super::{
    ALNUM, DIGITS, MAIN_PROGRAM, Rng, Synthetic, W3, partner_id, random_case, random_code,
    random_from,
};

/// 2026-03-01T00:00:00Z.
const BASE_TIME: i64 = 1_772_323_200;

fn rfc3339(rng: &mut Rng, secs: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp(secs, 0).expect("in range");
    if rng.percent(80) {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        let offset = FixedOffset::east_opt(2 * 3600).expect("valid offset");
        t.with_timezone(&offset)
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    }
}

/// An entered code: 60% an exact code in random case, 20% a regex hit, 20% unknown.
fn entered_code(rng: &mut Rng, table: &CodeTable, synthetic: &Corpus) -> (String, Option<u32>) {
    match rng.below(10) {
        0..=5 => {
            let id = synthetic.main_exact[rng.below(synthetic.main_exact.len())];
            (random_case(rng, &table.entry(id).code), Some(id))
        }
        6 | 7 => {
            let code = if rng.percent(90) {
                let prefix = &synthetic.prefixes[rng.below(synthetic.prefixes.len())];
                let len = rng.between(2, 6);
                format!("{prefix}{}", random_from(rng, ALNUM, len))
            } else {
                let prefix = &synthetic.shaped[rng.below(synthetic.shaped.len())];
                let len = rng.between(2, 4);
                format!("{prefix}{}", random_from(rng, DIGITS, len))
            };
            (code, None)
        }
        _ => {
            let code = random_code(rng, 8, 12);
            (random_case(rng, &code), None)
        }
    }
}

/// What the corpus generator needs from the synthetic table once the table owns the entries.
pub struct Corpus {
    pub main_exact: Vec<u32>,
    pub prefixes: Vec<String>,
    pub shaped: Vec<String>,
}

impl Corpus {
    pub fn from(synthetic: &Synthetic) -> Corpus {
        Corpus {
            main_exact: synthetic.main_exact.clone(),
            prefixes: synthetic.prefixes.clone(),
            shaped: synthetic.shaped_prefixes.clone(),
        }
    }
}

pub fn order_line(rng: &mut Rng, index: usize, table: &CodeTable, corpus: &Corpus) -> String {
    let event_secs = BASE_TIME + rng.below(30 * 86_400) as i64;
    let mut owners = Vec::new();
    let codes: Vec<String> = (0..rng.between(1, 3))
        .map(|_| {
            let (code, exact) = entered_code(rng, table, corpus);
            if let Some(owner) = exact.and_then(|id| table.entry(id).owner_partner_id.clone()) {
                owners.push(owner);
            }
            code
        })
        .collect();
    let touchpoints: Vec<Value> = (0..rng.between(0, 3))
        .map(|_| {
            // Half the clicks come from a code's owner, so the owner/winner rules are exercised.
            let partner = match owners.as_slice() {
                [first, ..] if rng.percent(50) => first.to_string(),
                _ => partner_id(rng.below(W3.partners)),
            };
            let ts = event_secs - rng.below(40 * 86_400) as i64;
            let mut touchpoint = json!({
                "partner_id": partner,
                "click_id": format!("clk-{:010x}", rng.next_u64() >> 24),
                "ts": rfc3339(rng, ts),
            });
            // `kind` defaults to a click; producers send it for views.
            if rng.percent(10) {
                touchpoint["kind"] = json!("view");
            }
            touchpoint
        })
        .collect();
    let order = json!({
        "schema_version": 1,
        "order_id": format!("ord-{index:06}"),
        "program_id": MAIN_PROGRAM,
        "event_type": "sale",
        "event_time": rfc3339(rng, event_secs),
        "promo_codes": codes,
        "touchpoints": touchpoints,
        "amount": (rng.below(50_000) as f64) / 100.0,
    });
    serde_json::to_string(&order).expect("serializes")
}

/// `count` orders from a fixed seed.
pub fn orders(table: &CodeTable, corpus: &Corpus, count: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| order_line(&mut rng, i, table, corpus))
        .collect()
}
