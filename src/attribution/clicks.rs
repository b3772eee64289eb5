//! The click path: which touchpoints count, which one wins, and which partners were involved.

use std::borrow::Cow;

use chrono::TimeDelta;

use crate::codes::{CodeTable, CreditGroup, Partner};
use crate::schema::{Touchpoint, TouchpointKind, ValidOrder};
use crate::timefmt::Instant;

/// Why a touchpoint does not count; shown by `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    View,
    AfterOrder,
    OutsideReferralWindow { window_days: u32 },
    PartnerInactive,
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::View => f.write_str("a view, not a click"),
            Ineligible::AfterOrder => f.write_str("after the order"),
            Ineligible::OutsideReferralWindow { window_days } => {
                write!(
                    f,
                    "older than the partner's {window_days}-day referral window"
                )
            }
            Ineligible::PartnerInactive => {
                f.write_str("partner inactive or out of contract at the order time")
            }
        }
    }
}

/// A click counts when it is a click, at or before the order, within the partner's referral
/// window (whole 24-hour periods, boundary inclusive), and the partner is active under a
/// contract that covers the order time.
pub fn eligibility(
    touchpoint: &Touchpoint<'_>,
    ts: Instant,
    event_time: Instant,
    partner: &Partner,
) -> Result<(), Ineligible> {
    if touchpoint.kind == TouchpointKind::View {
        return Err(Ineligible::View);
    }
    if ts > event_time {
        return Err(Ineligible::AfterOrder);
    }
    if event_time - ts > TimeDelta::days(i64::from(partner.referral_window_days)) {
        return Err(Ineligible::OutsideReferralWindow {
            window_days: partner.referral_window_days,
        });
    }
    if !partner.is_active_at(event_time) {
        return Err(Ineligible::PartnerInactive);
    }
    Ok(())
}

/// The touchpoint's own credit group overrides its partner's.
pub fn credit_group(touchpoint: &Touchpoint<'_>, partner: &Partner) -> CreditGroup {
    touchpoint.credit_group.unwrap_or(partner.credit_group)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickPath<'a> {
    /// Index into the order's touchpoints.
    pub winner: Option<usize>,
    pub winner_group: CreditGroup,
    /// Partners with at least one eligible click, sorted, each once.
    pub involved: Vec<Cow<'a, str>>,
}

impl<'a> ClickPath<'a> {
    pub fn winner_partner<'o>(&self, order: &'o ValidOrder<'a>) -> Option<&'o str> {
        self.winner
            .map(|i| order.order.touchpoints[i].partner_id.as_ref())
    }
}

/// The winning click: the highest credit group present, then the latest click, and between
/// clicks equal in both, the one listed last.
pub fn assess<'a>(order: &ValidOrder<'a>, table: &CodeTable) -> ClickPath<'a> {
    let mut best: Option<(CreditGroup, Instant, usize)> = None;
    let mut involved: Vec<Cow<'a, str>> = Vec::new();
    let touchpoints = order.order.touchpoints.iter().zip(&order.touchpoint_times);
    for (index, (touchpoint, &ts)) in touchpoints.enumerate() {
        let partner = table.partner_terms(&touchpoint.partner_id);
        if eligibility(touchpoint, ts, order.event_time, partner).is_err() {
            continue;
        }
        let key = (credit_group(touchpoint, partner), ts, index);
        if best.is_none_or(|b| key > b) {
            best = Some(key);
        }
        involved.push(touchpoint.partner_id.clone());
    }
    involved.sort_unstable();
    involved.dedup();
    ClickPath {
        winner: best.map(|(_, _, i)| i),
        winner_group: best.map_or(CreditGroup::Preferred, |(g, _, _)| g),
        involved,
    }
}
