//! The arithmetic of an adjustment: pure, exact, a function of the original decision and the
//! adjustments before it (the log), so the stream and the offline mode, and a replay, agree.

use super::{Request, Summary};
use crate::report::decimal::Decimal;
use crate::schema::{AdjustmentKind, Status};
use crate::settings::{AfterLock, ReversalSettings};

/// What remains of an order after the adjustments so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub amount: Decimal,
    pub discount: Decimal,
    /// Nothing payable remains (a REVERSAL was recorded).
    pub reversed: bool,
}

/// The change one adjustment makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    pub kind: AdjustmentKind,
    pub amount_delta: Decimal,
    pub discount_delta: Decimal,
    pub amount_after: Decimal,
    pub discount_after: Decimal,
    pub after_lock: bool,
    /// More was asked to be reversed than remained: the change was clamped to what remained.
    pub over_reversal: bool,
}

/// How an adjustment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// An adjustment record is written (with alerts when after the lock or over-reversed).
    Recorded(Adjusted),
    /// After the lock with `reversals.after_lock = alert_only`: an alert, no change.
    AlertOnly,
    /// Dead-lettered: the currency differs from the original's.
    CurrencyMismatch {
        original: Option<String>,
        given: Option<String>,
    },
    /// Dead-lettered: the new total is above what remains (an adjustment never adds).
    RaisesAmount {
        remaining: String,
        requested: String,
    },
    /// Dead-lettered: a sum beyond 38 digits.
    Overflow,
}

impl Effect {
    /// The dead-letter reason, for an effect that writes no record and no alert.
    pub fn rejection(&self) -> Option<(&'static str, String)> {
        match self {
            Effect::CurrencyMismatch { original, given } => Some((
                "adjustment_currency_mismatch",
                format!(
                    "adjustment currency {} differs from the original's {}",
                    given.as_deref().unwrap_or("null"),
                    original.as_deref().unwrap_or("null")
                ),
            )),
            Effect::RaisesAmount {
                remaining,
                requested,
            } => Some((
                "adjustment_raises_amount",
                format!("new total {requested} is above the {remaining} that remains"),
            )),
            Effect::Overflow => Some((
                "adjustment_amount_overflow",
                "amounts do not fit an exact decimal of 38 digits".into(),
            )),
            Effect::Recorded(_) | Effect::AlertOnly => None,
        }
    }
}

/// Whether an adjustment at `event_ms` comes after the original's lock date.
pub fn after_lock(summary: &Summary, event_ms: i64, settings: &ReversalSettings) -> bool {
    let lock_ms = i64::try_from(settings.lock_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    event_ms > summary.event_ms.saturating_add(lock_ms)
}

/// Evaluates the last request of `log` after the ones before it (each of which is evaluated the
/// same way; those that wrote no record change nothing).
pub fn evaluate(summary: &Summary, log: &[Request], settings: &ReversalSettings) -> Effect {
    let Some(start) = opening(summary) else {
        return Effect::Overflow;
    };
    let Some((last, prior)) = log.split_last() else {
        return Effect::Overflow;
    };
    let mut position = start;
    for request in prior {
        if let Effect::Recorded(done) = step(summary, position, request, settings) {
            position = Position {
                amount: done.amount_after,
                discount: done.discount_after,
                reversed: done.kind == AdjustmentKind::Reversal,
            };
        }
    }
    step(summary, position, last, settings)
}

/// The original's amounts; an order without an amount counts as 0 (a cancel still reverses it).
fn opening(summary: &Summary) -> Option<Position> {
    let read = |text: &Option<String>| match text {
        Some(t) => Decimal::parse(t),
        None => Some(Decimal::ZERO),
    };
    Some(Position {
        amount: read(&summary.amount)?,
        discount: read(&summary.discount)?,
        reversed: false,
    })
}

fn step(
    summary: &Summary,
    position: Position,
    request: &Request,
    settings: &ReversalSettings,
) -> Effect {
    if request.currency.is_some() && request.currency != summary.currency {
        return Effect::CurrencyMismatch {
            original: summary.currency.clone(),
            given: request.currency.clone(),
        };
    }
    let late = after_lock(summary, request.event_ms, settings);
    if late && settings.after_lock == AfterLock::AlertOnly && summary.status == Status::Credited {
        return Effect::AlertOnly;
    }
    let parse = |text: &Option<String>| text.as_deref().map(Decimal::parse);
    let requested = match parse(&request.new_amount) {
        None => Decimal::ZERO,
        Some(Some(amount)) => amount,
        Some(None) => return Effect::Overflow,
    };
    // A negative total asks to reverse more than the order had: clamp at nothing left. So does
    // any adjustment of an order already fully reversed.
    let mut over_reversal = requested.signum() < 0 || position.reversed;
    let amount_after = if requested.signum() < 0 {
        Decimal::ZERO
    } else {
        requested
    };
    let Some(amount_delta) = amount_after.checked_sub(position.amount) else {
        return Effect::Overflow;
    };
    if amount_delta.signum() > 0 {
        return Effect::RaisesAmount {
            remaining: position.amount.to_string(),
            requested: requested.to_string(),
        };
    }
    let discount_after = match parse(&request.new_discount) {
        _ if amount_after.signum() == 0 => Decimal::ZERO,
        None => position.discount,
        Some(None) => return Effect::Overflow,
        Some(Some(d)) if d.signum() < 0 => {
            over_reversal = true;
            Decimal::ZERO
        }
        Some(Some(d)) => match d.checked_sub(position.discount) {
            Some(diff) if diff.signum() > 0 => position.discount,
            Some(_) => d,
            None => return Effect::Overflow,
        },
    };
    let Some(mut discount_delta) = discount_after.checked_sub(position.discount) else {
        return Effect::Overflow;
    };
    let mut discount_after = discount_after;
    // Deltas are never above zero. An original whose discount is below zero (a platform that
    // writes discounts as negative numbers) keeps it, rather than have a reversal raise it.
    if discount_delta.signum() > 0 {
        discount_after = position.discount;
        discount_delta = Decimal::ZERO;
    }
    Effect::Recorded(Adjusted {
        kind: if amount_after.signum() == 0 {
            AdjustmentKind::Reversal
        } else {
            AdjustmentKind::Partial
        },
        amount_delta,
        discount_delta,
        amount_after,
        discount_after,
        after_lock: late,
        over_reversal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Reason;

    const DAY_MS: i64 = 86_400_000;

    fn summary(amount: Option<&str>, discount: Option<&str>) -> Summary {
        Summary {
            event_id: "conv".into(),
            status: Status::Credited,
            partner_id: Some("100".into()),
            basis: None,
            code_id: Some("c1".into()),
            amount: amount.map(str::to_owned),
            discount: discount.map(str::to_owned),
            currency: Some("EUR".into()),
            code_table_version: "v1".into(),
            event_time: "2026-05-10T12:00:00Z".into(),
            event_ms: 0,
        }
    }

    fn request(id: &str, amount: Option<&str>, day: i64) -> Request {
        Request {
            adjustment_id: id.into(),
            fingerprint: format!("f-{id}"),
            event_type: "refund".into(),
            reason: Reason::ItemReturned,
            new_amount: amount.map(str::to_owned),
            new_discount: None,
            currency: amount.map(|_| "EUR".into()),
            event_time: String::new(),
            event_ms: day * DAY_MS,
        }
    }

    fn recorded(effect: Effect) -> Adjusted {
        match effect {
            Effect::Recorded(a) => a,
            other => panic!("not recorded: {other:?}"),
        }
    }

    fn text(d: Decimal) -> String {
        d.to_string()
    }

    #[test]
    fn sale_partial_return_then_cancel() {
        let settings = ReversalSettings::default();
        let original = summary(Some("100.10"), Some("10"));
        let partial = request("r1", Some("60"), 2);
        let first = recorded(evaluate(
            &original,
            std::slice::from_ref(&partial),
            &settings,
        ));
        assert_eq!(first.kind, AdjustmentKind::Partial);
        assert_eq!(
            (text(first.amount_delta), text(first.amount_after)),
            ("-40.10".into(), "60".into())
        );
        assert_eq!(
            text(first.discount_delta),
            "0",
            "a partial keeps the discount"
        );
        let cancel = request("c1", None, 3);
        let second = recorded(evaluate(
            &original,
            &[partial.clone(), cancel.clone()],
            &settings,
        ));
        assert_eq!(second.kind, AdjustmentKind::Reversal);
        assert_eq!(text(second.amount_delta), "-60");
        assert_eq!(text(second.discount_delta), "-10");
        assert!(!second.over_reversal && !second.after_lock);
        // Cumulative deltas are exactly the original amount.
        let total = first
            .amount_delta
            .checked_add(second.amount_delta)
            .expect("fits");
        assert_eq!(text(total), "-100.10");
        // A cancel after the reversal reverses nothing more.
        let again = recorded(evaluate(
            &original,
            &[partial, cancel, request("c2", None, 4)],
            &settings,
        ));
        assert!(again.over_reversal);
        assert_eq!(text(again.amount_delta), "0");
    }

    #[test]
    fn a_negative_total_is_clamped_and_a_higher_one_refused() {
        let settings = ReversalSettings::default();
        let original = summary(Some("50"), None);
        let over = recorded(evaluate(
            &original,
            &[request("r", Some("-20"), 1)],
            &settings,
        ));
        assert!(over.over_reversal);
        assert_eq!(
            (text(over.amount_delta), over.kind),
            ("-50".into(), AdjustmentKind::Reversal)
        );
        let raise = evaluate(&original, &[request("r", Some("50.01"), 1)], &settings);
        assert_eq!(
            raise.rejection().map(|r| r.0),
            Some("adjustment_raises_amount")
        );
    }

    #[test]
    fn currency_mismatch_is_a_dead_letter_and_changes_nothing_after_it() {
        let settings = ReversalSettings::default();
        let original = summary(Some("80"), None);
        let mut usd = request("r1", Some("10"), 1);
        usd.currency = Some("USD".into());
        let effect = evaluate(&original, std::slice::from_ref(&usd), &settings);
        assert_eq!(
            effect.rejection().map(|r| r.0),
            Some("adjustment_currency_mismatch")
        );
        let next = recorded(evaluate(
            &original,
            &[usd, request("r2", Some("70"), 2)],
            &settings,
        ));
        assert_eq!(
            text(next.amount_delta),
            "-10",
            "measured from the original 80"
        );
    }

    #[test]
    fn after_the_lock_emits_flagged_or_only_alerts() {
        let emit = ReversalSettings::default();
        let original = summary(Some("80"), None);
        let late = request("r1", Some("40"), 31);
        assert!(recorded(evaluate(&original, std::slice::from_ref(&late), &emit)).after_lock);
        let on_time = request("r0", Some("40"), 30);
        assert!(!recorded(evaluate(&original, &[on_time], &emit)).after_lock);
        let alert_only = ReversalSettings {
            after_lock: AfterLock::AlertOnly,
            ..ReversalSettings::default()
        };
        assert_eq!(
            evaluate(&original, std::slice::from_ref(&late), &alert_only),
            Effect::AlertOnly
        );
        let after = recorded(evaluate(
            &original,
            &[late, request("r2", Some("70"), 2)],
            &alert_only,
        ));
        assert_eq!(
            text(after.amount_delta),
            "-10",
            "the late one changed nothing"
        );
    }

    #[test]
    fn discounts_follow_a_new_discount_and_never_rise() {
        let settings = ReversalSettings::default();
        let original = summary(Some("100"), Some("10"));
        let mut r = request("r", Some("50"), 1);
        r.new_discount = Some("5".into());
        let a = recorded(evaluate(&original, std::slice::from_ref(&r), &settings));
        assert_eq!(text(a.discount_delta), "-5");
        r.new_discount = Some("12".into());
        let b = recorded(evaluate(&original, &[r], &settings));
        assert_eq!(text(b.discount_delta), "0", "a discount never grows");
    }

    /// Found by the `order_engine` fuzz target: a sale with a discount below zero, then a
    /// refund, gave `discount_delta` +12, which the adjustment schema (deltas are never above 0)
    /// refuses.
    #[test]
    fn a_discount_below_zero_on_the_original_is_never_raised() {
        let settings = ReversalSettings::default();
        let original = summary(Some("120"), Some("-12"));
        let cancel = request("c", None, 1);
        let reversed = recorded(evaluate(
            &original,
            std::slice::from_ref(&cancel),
            &settings,
        ));
        assert_eq!(reversed.kind, AdjustmentKind::Reversal);
        assert_eq!(text(reversed.amount_delta), "-120");
        assert_eq!(text(reversed.discount_delta), "0");
        let mut partial = request("p", Some("60"), 1);
        partial.new_discount = Some("-5".into());
        let partial = recorded(evaluate(&original, &[partial], &settings));
        assert_eq!(text(partial.discount_delta), "0");
        assert!(partial.over_reversal, "a negative new discount is clamped");
    }

    #[test]
    fn an_order_without_amount_is_reversed_by_a_cancel() {
        let settings = ReversalSettings::default();
        let original = summary(None, None);
        let a = recorded(evaluate(&original, &[request("c", None, 1)], &settings));
        assert_eq!(
            (a.kind, text(a.amount_delta)),
            (AdjustmentKind::Reversal, "0".into())
        );
    }
}
