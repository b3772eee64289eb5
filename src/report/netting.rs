//! Adjustment records (`schema/adjustment.schema.json`) netted against the report's rows: the
//! amounts reversed from CREDITED conversions, by the same subject the conversions are counted
//! by (the original's code or partner, copied into the adjustment), so `net_revenue` is what
//! the partners' commission should be computed from.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::aggregate::{AddError, By, Selection};
use super::decimal::Decimal;
use crate::schema::order::borrowed_opt;
use crate::schema::{Basis, Status};
use crate::timefmt::parse_rfc3339;

#[derive(Deserialize)]
struct Adjustment<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    program_id: Cow<'a, str>,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
    original_status: Status,
    #[serde(default)]
    basis: Option<Basis>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    partner_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    amount_delta: &'a RawValue,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    currency: Option<Cow<'a, str>>,
}

/// Reversed count and amount per (program, subject, currency).
pub type Reversals = BTreeMap<(String, Option<String>, Option<String>), (u64, Decimal)>;

/// Reads adjustment records, each `event_id` once (a repeat of an adjustment is the same
/// record again).
pub struct Netting {
    by: By,
    selection: Selection,
    seen: HashSet<String>,
    pub reversals: Reversals,
    pub records: u64,
    pub repeats: u64,
}

impl Netting {
    pub fn new(by: By, selection: Selection) -> Netting {
        Netting {
            by,
            selection,
            seen: HashSet::new(),
            reversals: Reversals::new(),
            records: 0,
            repeats: 0,
        }
    }

    /// Counts one adjustment record. Selection: `--program`, and `--from`/`--to` on the
    /// adjustment's event time.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), AddError> {
        self.records += 1;
        let a: Adjustment<'_> = serde_json::from_slice(bytes)
            .map_err(|e| AddError::Unreadable(format!("not an adjustment record: {e}")))?;
        if self
            .selection
            .program
            .as_deref()
            .is_some_and(|p| p != a.program_id)
        {
            return Ok(());
        }
        if self.selection.from.is_some() || self.selection.to.is_some() {
            let at = parse_rfc3339(&a.event_time).ok_or_else(|| {
                AddError::Unreadable(format!("event_time {:?} is not RFC 3339", a.event_time))
            })?;
            if self.selection.from.is_some_and(|f| at < f)
                || self.selection.to.is_some_and(|t| at >= t)
            {
                return Ok(());
            }
        }
        if !self.seen.insert(a.event_id.to_string()) {
            self.repeats += 1;
            return Ok(());
        }
        let through_code = matches!(
            a.basis,
            Some(Basis::CodeAlways | Basis::CodeInvolved | Basis::CodeWinner)
        );
        let subject = match (self.by, a.original_status) {
            (By::Code, Status::Credited) if through_code => a.code.as_deref(),
            (By::Partner, Status::Credited) => a.partner_id.as_deref(),
            // Nothing payable changes for other originals, and reasons have no revenue to net.
            _ => return Ok(()),
        };
        let delta = Decimal::parse(a.amount_delta.get()).ok_or_else(|| AddError::Money {
            event_id: a.event_id.to_string(),
            field: "amount_delta",
            value: a.amount_delta.get().to_string(),
        })?;
        let entry = self
            .reversals
            .entry((
                a.program_id.to_string(),
                subject.map(str::to_owned),
                a.currency.as_deref().map(str::to_owned),
            ))
            .or_insert((0, Decimal::ZERO));
        entry.0 += 1;
        entry.1 = Decimal::ZERO
            .checked_sub(delta)
            .and_then(|reversed| entry.1.checked_add(reversed))
            .ok_or_else(|| AddError::Money {
                event_id: a.event_id.to_string(),
                field: "amount_delta",
                value: a.amount_delta.get().to_string(),
            })?;
        Ok(())
    }
}
