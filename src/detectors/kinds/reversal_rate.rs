//! HIGH_REVERSAL_RATE: the share of a code's, and of a partner's, credited amount that refunds
//! and cancellations took back, per tumbling window of the **sales'** event time.
//!
//! Unlike the other detectors it counts in the decision store (`src/reversals/store.rs`): that
//! is where a sale's summary is written once and where an adjustment's reversed amount becomes
//! known. A credited sale adds one order and its amount to its window ([`counter`] for a
//! credit; the store counts it once per order, and only for the decision whose summary it
//! kept), and an adjustment that takes money back adds to the reversed orders and amount of the
//! window *its sale* was credited in (once per adjustment id: the store keeps what the first
//! count saw and answers a repeat or a replay with it, so the alerts come out byte for byte
//! the same). A refund is thus measured against the sales it reverses, however late it comes
//! (within `reversals.retention_secs`), and a window's share is reversed / credited of the same
//! orders; the window is left open to refunds for the retention after it ends.
//!
//! Redis has no decimals, so amounts are counted in hundredths of the currency unit, as
//! integers, cut toward zero per order (a third decimal place is dropped; negligible against a
//! percentage threshold). Counts are kept per currency, so a program selling in two currencies
//! never adds euros to dollars; the window's share is judged per (subject, currency).

use std::borrow::Cow;

use serde_json::json;

use crate::detectors::{Thresholds, crossed_power_of_two, secs_ms, window_start};
use crate::ids::alert_id;
use crate::report::decimal::Decimal;
use crate::schema::alert::{MAX_EVIDENCE_ORDERS, SCHEMA_VERSION};
use crate::schema::{Alert, AlertKind, Detail};
use crate::timefmt::format_instant;

/// Amounts are counted in units of 10^-2 of the currency.
pub const UNITS_SCALE: u32 = 2;

/// What a window's counts are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Code,
    Partner,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Code => "code",
            Subject::Partner => "partner",
        }
    }
}

/// A credited sale as the counts see it (from its decision, or its stored summary when an
/// adjustment reverses it).
#[derive(Debug, Clone, Copy)]
pub struct Sale<'a> {
    pub program_id: &'a str,
    pub code_id: Option<&'a str>,
    pub partner_id: Option<&'a str>,
    pub currency: Option<&'a str>,
    /// The sale's event time: it picks the window, for the sale and for its reversals.
    pub sale_ms: i64,
}

impl<'a> Sale<'a> {
    /// The subjects counted, code first: the order of [`RateCounter::fields`] and of the
    /// counts the store answers with.
    pub fn subjects(&self) -> Vec<(Subject, &'a str)> {
        [
            self.code_id.map(|c| (Subject::Code, c)),
            self.partner_id.map(|p| (Subject::Partner, p)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn window_ms(&self, t: &Thresholds) -> i64 {
        window_start(self.sale_ms, secs_ms(t.reversal_window_secs))
    }
}

/// One count to add: `units` (and, for a credit, one order) to each field of the window's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCounter {
    /// The window's hash, in the program's slot.
    pub key: String,
    pub ttl_secs: u64,
    /// One per subject (a hash of subject, currency and id, so any id makes a short field).
    pub fields: Vec<String>,
    pub units: u64,
}

/// The counter of `sale` for `amount` (the credited amount, or the amount an adjustment took
/// back), or `None` when the detector is off or the sale has no subject. `base` is the
/// program's key prefix (`<prefix>d:{<program>}:`); the window outlives its end by
/// `retention_secs`, the time a refund may still come.
pub fn counter(
    base: &str,
    t: &Thresholds,
    retention_secs: u64,
    sale: &Sale<'_>,
    amount: Decimal,
) -> Option<RateCounter> {
    let subjects = sale.subjects();
    if !t.reversal_rate || subjects.is_empty() {
        return None;
    }
    let currency = sale.currency.unwrap_or("");
    let units = amount.truncated_units(UNITS_SCALE).map_or(0, |u| {
        u64::try_from(u.clamp(0, i128::from(i64::MAX))).unwrap_or(0)
    });
    Some(RateCounter {
        key: format!("{base}rr:{}", sale.window_ms(t)),
        ttl_secs: t.reversal_window_secs.saturating_add(retention_secs).max(1),
        fields: subjects
            .iter()
            .map(|(subject, id)| alert_id(&[subject.as_str(), currency, id]))
            .collect(),
        units,
    })
}

/// What one reversal saw for one subject: the window's credited orders and amount now and as
/// the subject's previous reversal saw them (0 for the first), and its reversed orders and
/// amount before and after this reversal (amounts in hundredths), with the first reversed
/// orders as evidence. The previous reversal's view is what the share was last judged on:
/// credits move the share between reversals, and an incident starts when a reversal finds it
/// holding where the previous one did not (the minimum volume may have come from credits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCounts {
    pub orders: u64,
    pub credited: u64,
    pub orders_before: u64,
    pub credited_before: u64,
    pub reversed_orders_before: u64,
    pub reversed_before: u64,
    pub reversed_orders: u64,
    pub reversed: u64,
    pub evidence: Vec<String>,
}

type Row = (u64, u64, u64, u64, u64, u64, u64, u64, Vec<String>);

impl RateCounts {
    /// Reads the store's record of a reversal's counts: a JSON array, per subject
    /// `[orders, credited, orders before, credited before, reversed orders before, reversed
    /// before, reversed orders, reversed, [evidence]]`.
    pub fn parse_all(text: &str) -> Result<Vec<RateCounts>, String> {
        let rows: Vec<Row> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(o, c, ob, cb, rob, rb, ro, r, evidence)| RateCounts {
                orders: o,
                credited: c,
                orders_before: ob,
                credited_before: cb,
                reversed_orders_before: rob,
                reversed_before: rb,
                reversed_orders: ro,
                reversed: r,
                evidence,
            })
            .collect())
    }
}

/// Enough credited orders, and strictly more than the threshold's share of their amount
/// reversed.
fn holds(t: &Thresholds, orders: u64, credited: u64, reversed: u64) -> bool {
    orders >= t.reversal_min_orders
        && u128::from(reversed) * 100 > u128::from(t.reversal_share_percent) * u128::from(credited)
}

/// Whether this reversal writes the incident's alert: when the share starts to hold, and again
/// each time the reversed orders reach a new power of two while it holds.
pub fn fires(t: &Thresholds, c: &RateCounts) -> bool {
    holds(t, c.orders, c.credited, c.reversed)
        && (!holds(t, c.orders_before, c.credited_before, c.reversed_before)
            || crossed_power_of_two(c.reversed_orders_before, c.reversed_orders))
}

/// Where an alert is raised from: the adjustment event that reversed money.
#[derive(Debug, Clone, Copy)]
pub struct Raised<'a> {
    pub event_time: &'a str,
    pub code_table_version: &'a str,
    pub order_id: &'a str,
}

/// The alerts of one reversal's counts, one per subject whose share fires.
pub fn alerts(
    t: &Thresholds,
    sale: &Sale<'_>,
    counts: &[RateCounts],
    raised: &Raised<'_>,
) -> Vec<Alert<'static>> {
    let window = sale.window_ms(t);
    let currency = sale.currency.unwrap_or("");
    let owned = |s: &str| Cow::Owned(s.to_string());
    sale.subjects()
        .into_iter()
        .zip(counts)
        .filter(|(_, c)| fires(t, c))
        .map(|((subject, id), c)| {
            let kind = AlertKind::HighReversalRate;
            let mut order_ids: Vec<Cow<'static, str>> = c
                .evidence
                .iter()
                .take(MAX_EVIDENCE_ORDERS)
                .map(|o| owned(o))
                .collect();
            if order_ids.is_empty() {
                order_ids.push(owned(raised.order_id));
            }
            Alert {
                schema_version: SCHEMA_VERSION,
                alert_id: alert_id(&[
                    kind.as_str(),
                    sale.program_id,
                    subject.as_str(),
                    currency,
                    id,
                    &window.to_string(),
                ]),
                kind,
                severity: kind.severity(),
                program_id: owned(sale.program_id),
                order_ids,
                code_id: (subject == Subject::Code).then(|| owned(id)),
                code: None,
                owner_partner_id: (subject == Subject::Partner).then(|| owned(id)),
                other_partner_id: None,
                event_time: owned(raised.event_time),
                code_table_version: owned(raised.code_table_version),
                count: c.reversed_orders,
                detail: Detail::Value(json!({
                    "subject": subject.as_str(),
                    "currency": sale.currency,
                    "window_start": instant(window),
                    "window_end": instant(window + secs_ms(t.reversal_window_secs)),
                    "credited_orders": c.orders,
                    "credited_amount": hundredths(c.credited),
                    "reversed_orders": c.reversed_orders,
                    "reversed_amount": hundredths(c.reversed),
                    "reversed_share_percent": c.reversed * 100 / c.credited.max(1),
                    "threshold_percent": t.reversal_share_percent,
                    "min_orders": t.reversal_min_orders,
                })),
            }
        })
        .collect()
}

fn hundredths(units: u64) -> String {
    format!("{}.{:02}", units / 100, units % 100)
}

fn instant(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| format_instant(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(orders: u64, credited: u64, before: (u64, u64), after: (u64, u64)) -> RateCounts {
        RateCounts {
            orders,
            credited,
            orders_before: orders,
            credited_before: credited,
            reversed_orders_before: before.0,
            reversed_before: before.1,
            reversed_orders: after.0,
            reversed: after.1,
            evidence: Vec::new(),
        }
    }

    fn sale(sale_ms: i64) -> Sale<'static> {
        Sale {
            program_id: "p",
            code_id: Some("LI:A"),
            partner_id: Some("100"),
            currency: Some("EUR"),
            sale_ms,
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            reversal_min_orders: 10,
            reversal_share_percent: 50,
            ..Thresholds::default()
        }
    }

    #[test]
    fn fires_when_the_share_crosses_the_threshold_with_enough_orders() {
        let t = thresholds();
        assert!(fires(&t, &counts(10, 1000, (4, 500), (5, 501))));
        assert!(
            !fires(&t, &counts(10, 1000, (4, 499), (5, 500))),
            "exactly the threshold is not above it"
        );
        assert!(
            !fires(&t, &counts(9, 1000, (4, 0), (9, 1000))),
            "below the minimum volume, even all reversed"
        );
        let mut volume = counts(10, 1000, (8, 800), (9, 900));
        volume.orders_before = 9;
        assert!(
            fires(&t, &volume),
            "the volume came from credits since the last reversal"
        );
        volume.orders_before = 10;
        assert!(
            !fires(&t, &volume),
            "it held when last judged, and 9 is no power of two"
        );
    }

    #[test]
    fn one_alert_per_incident_then_at_powers_of_two() {
        let t = thresholds();
        let holding = |before: u64, after: u64| counts(20, 1000, (before, 900), (after, 950));
        assert!(!fires(&t, &holding(5, 6)), "already holding, 6 is no power");
        assert!(fires(&t, &holding(7, 8)));
        assert!(
            !fires(&t, &holding(8, 8)),
            "a second partial of a reversed order"
        );
        assert!(
            fires(&t, &counts(20, 1000, (8, 400), (8, 600))),
            "a second partial that makes it hold"
        );
    }

    #[test]
    fn counters_cut_amounts_to_hundredths_and_key_by_the_sales_window() {
        let t = thresholds();
        let sale = sale(7 * 86_400_000 + 5);
        let amount = Decimal::parse("19.999").expect("decimal");
        let c = counter("x:{p}:", &t, 60, &sale, amount).expect("counted");
        assert_eq!(c.units, 1999);
        assert_eq!(c.key, "x:{p}:rr:604800000");
        assert_eq!(c.fields.len(), 2);
        assert_ne!(c.fields[0], c.fields[1]);
        let negative = Decimal::parse("-3").expect("decimal");
        assert_eq!(
            counter("x:", &t, 60, &sale, negative).map(|c| c.units),
            Some(0)
        );
        let off = Thresholds {
            reversal_rate: false,
            ..t
        };
        assert_eq!(counter("x:", &off, 60, &sale, amount), None);
        let nobody = Sale {
            code_id: None,
            partner_id: None,
            ..sale
        };
        assert_eq!(counter("x:", &thresholds(), 60, &nobody, amount), None);
    }

    #[test]
    fn alerts_name_the_subject_and_share_one_id_per_window() {
        let t = thresholds();
        let sale = sale(0);
        let raised = Raised {
            event_time: "2026-01-01T00:00:00Z",
            code_table_version: "v1",
            order_id: "o9",
        };
        let mut code = counts(10, 1000, (4, 500), (5, 600));
        code.evidence = vec!["o1".into(), "o2".into()];
        let partner = counts(100, 100_000, (5, 600), (5, 600));
        let alerts = alerts(&t, &sale, &[code.clone(), partner], &raised);
        assert_eq!(alerts.len(), 1, "only the code's share holds");
        let a = &alerts[0];
        assert_eq!(a.kind, AlertKind::HighReversalRate);
        assert_eq!(a.code_id.as_deref(), Some("LI:A"));
        assert_eq!(a.order_ids, ["o1", "o2"]);
        assert_eq!(a.count, 5);
        let detail = a.detail.to_value();
        assert_eq!(detail["credited_amount"], "10.00");
        assert_eq!(detail["reversed_amount"], "6.00");
        assert_eq!(detail["reversed_share_percent"], 60);
        code.reversed_orders_before = 7;
        code.reversed_orders = 8;
        let again = super::alerts(&t, &sale, &[code], &raised);
        assert_eq!(again[0].alert_id, a.alert_id, "the same incident");
    }

    #[test]
    fn the_stores_record_parses() {
        let parsed = RateCounts::parse_all(
            r#"[[3,900,3,900,1,100,2,250,["o1","a\/b"]],[1,2,1,2,0,0,1,2,[]]]"#,
        )
        .expect("parses");
        assert_eq!(parsed[0].evidence, ["o1", "a/b"]);
        assert_eq!(parsed[1], counts(1, 2, (0, 0), (1, 2)));
        assert!(RateCounts::parse_all("[[1,2]]").is_err());
    }
}
