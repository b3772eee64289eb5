//! The decision: which partner an order credits, or why none, and the alerts the order raises on
//! its own. impact.com semantics; the rules are written out in the README ("Decision rules").
//!
//! Pure and deterministic: the output depends only on the record bytes, the order parsed from
//! them, the code table and the settings, never on the clock or on touchpoint order (beyond the
//! documented tie rule).

pub mod alerts;
pub mod clicks;

use std::borrow::Cow;

use crate::codes::normalize::trim_entered;
use crate::codes::{CodeEntry, CodeState, CodeTable, CodeType, CreditPolicy, EntryId};
use crate::ids::conversion_event_id;
use crate::schema::{
    Alert, Basis, ClickRef, CodeRef, Conversion, InvalidReason, JsonNumber, Status, ValidOrder,
};
use crate::settings::{AttributionSettings, ForeignCodeRule};
use crate::timefmt::Instant;

pub use clicks::ClickPath;

/// The rule that decided an order; `explain` prints it, tests assert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    AlwaysCode,
    InvolvedOwnerCredited,
    WinnerOwnerCredited,
    ForeignCodeInvalidated,
    ForeignCodeClickCredited,
    OwnerNotInvolved,
    OwnerNotWinner,
    RestrictedCodeWithClick,
    InvalidCodeClickCredited,
    InvalidCodeNoClick,
    NoCodeClickCredited,
    Unattributed,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::AlwaysCode => "an ALWAYS code credits its owner whatever the click path",
            Rule::InvolvedOwnerCredited => "an INVOLVED code credits its owner, who has an eligible click",
            Rule::WinnerOwnerCredited => "a WINNER code credits its owner, who has the winning click",
            Rule::ForeignCodeInvalidated => {
                "the click winner used a code another partner owns: the winner's conversion is invalid (foreign_code = invalidate)"
            }
            Rule::ForeignCodeClickCredited => {
                "the click winner used a code another partner owns: the click wins (foreign_code = credit_click_winner)"
            }
            Rule::OwnerNotInvolved => "INVOLVED code, but its owner has no eligible click and nobody else won",
            Rule::OwnerNotWinner => "WINNER code, but there is no winning click",
            Rule::RestrictedCodeWithClick => "a RESTRICTED code was used on a partner-driven order: nobody is credited",
            Rule::InvalidCodeClickCredited => "the only codes are invalid, so the click winner is credited",
            Rule::InvalidCodeNoClick => "the only codes are invalid and there is no eligible click",
            Rule::NoCodeClickCredited => "no code matched, so the click winner is credited",
            Rule::Unattributed => "no code matched and there is no eligible click",
        })
    }
}

/// One entered code that matched the table.
#[derive(Debug, Clone, Copy)]
pub struct MatchedCode<'a> {
    /// Position in the order's `promo_codes`.
    pub position: usize,
    pub entered: &'a str,
    pub entry: EntryId,
    pub validity: Result<(), InvalidReason>,
    pub owners_differ: bool,
}

#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub conversion: Conversion<'a>,
    pub alerts: Vec<Alert<'a>>,
    pub rule: Rule,
    /// Every entered code that matched the table, in entry order: the detectors count uses from
    /// these rather than matching the codes a second time.
    pub matched: Vec<MatchedCode<'a>>,
}

/// Whether a matched code may credit at `at`; the first failing check, in the order State,
/// expired, not yet active, restricted, owner, gives the reason.
pub fn code_validity(
    entry: &CodeEntry,
    at: Instant,
    table: &CodeTable,
) -> Result<(), InvalidReason> {
    if entry.state == CodeState::Expired {
        return Err(InvalidReason::CodeInactive);
    }
    if entry.end.is_some_and(|end| at >= end) {
        return Err(InvalidReason::CodeExpired);
    }
    if entry.start.is_some_and(|start| at < start) {
        return Err(InvalidReason::CodeNotYetActive);
    }
    if entry.code_type == CodeType::Restricted {
        return Err(InvalidReason::CodeRestricted);
    }
    let owner = entry.owner_partner_id.as_deref().unwrap_or_default();
    if !table.partner_terms(owner).is_active_at(at) {
        return Err(InvalidReason::PartnerContractInactive);
    }
    Ok(())
}

thread_local! {
    /// Regex candidates of one lookup; kept per thread so that matching allocates nothing once
    /// warm.
    static LOOKUP_SCRATCH: std::cell::RefCell<Vec<EntryId>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Matches every entered code; the rest are unknown. A blank entry (checkout forms send `""`
/// for "no code") is neither.
pub fn match_codes<'a>(
    order: &'a ValidOrder<'a>,
    table: &CodeTable,
) -> (Vec<MatchedCode<'a>>, Vec<Cow<'a, str>>) {
    let mut matched = Vec::with_capacity(order.order.promo_codes.len());
    let mut unknown = Vec::new();
    let program = table.program(&order.order.program_id);
    for (position, entered) in order.order.promo_codes.iter().enumerate() {
        if trim_entered(entered).is_empty() {
            continue;
        }
        let hit = program.and_then(|p| {
            LOOKUP_SCRATCH.with_borrow_mut(|scratch| table.lookup(p, entered, scratch))
        });
        match hit {
            Some(hit) => matched.push(MatchedCode {
                position,
                entered: entered.as_ref(),
                entry: hit.entry,
                validity: code_validity(table.entry(hit.entry), order.event_time, table),
                owners_differ: hit.owners_differ,
            }),
            None => unknown.push(Cow::Borrowed(entered.as_ref())),
        }
    }
    (matched, unknown)
}

/// What the rules concluded, before it is dressed as a conversion.
struct Outcome<'a> {
    status: Status,
    basis: Option<Basis>,
    partner: Option<&'a str>,
    invalid_reason: Option<InvalidReason>,
    invalid_partner: Option<&'a str>,
    overridden: Option<&'a str>,
    code: Option<MatchedCode<'a>>,
    rule: Rule,
}

impl<'a> Outcome<'a> {
    fn credited(partner: &'a str, basis: Basis, code: Option<MatchedCode<'a>>, rule: Rule) -> Self {
        Outcome {
            status: Status::Credited,
            basis: Some(basis),
            partner: Some(partner),
            invalid_reason: None,
            invalid_partner: None,
            overridden: None,
            code,
            rule,
        }
    }

    fn invalid(
        reason: InvalidReason,
        partner: Option<&'a str>,
        code: Option<MatchedCode<'a>>,
        rule: Rule,
    ) -> Self {
        Outcome {
            status: Status::Invalid,
            basis: None,
            partner: None,
            invalid_reason: Some(reason),
            invalid_partner: partner,
            overridden: None,
            code,
            rule,
        }
    }
}

/// Decides one order. `record` is the exact input bytes, from which the conversion's `event_id`
/// is derived.
pub fn decide<'a>(
    record: &[u8],
    order: &'a ValidOrder<'a>,
    table: &'a CodeTable,
    settings: &AttributionSettings,
) -> Decision<'a> {
    let path = clicks::assess(order, table);
    let winner = path.winner_partner(order);
    let (matched, unknown_codes) = match_codes(order, table);
    let foreign_rule = settings.foreign_code_for(&order.order.program_id);
    let outcome = apply_rules(&matched, &path, winner, table, foreign_rule);
    let alerts = alerts::per_order_alerts(
        order,
        table,
        &matched,
        &outcome_view(&outcome, winner, foreign_rule),
    );
    let conversion = Conversion {
        schema_version: crate::schema::conversion::SCHEMA_VERSION,
        event_id: Cow::Owned(conversion_event_id(record)),
        order_id: Cow::Borrowed(&order.order.order_id),
        program_id: Cow::Borrowed(&order.order.program_id),
        event_type: Cow::Borrowed(&order.order.event_type),
        event_time: Cow::Borrowed(&order.order.event_time),
        amount: order.order.amount.as_ref().map(JsonNumber::borrowed),
        discount: order.order.discount.as_ref().map(JsonNumber::borrowed),
        currency: order.order.currency.as_deref().map(Cow::Borrowed),
        status: outcome.status,
        basis: outcome.basis,
        partner_id: outcome.partner.map(Cow::Borrowed),
        invalid_reason: outcome.invalid_reason,
        invalid_partner_id: outcome.invalid_partner.map(Cow::Borrowed),
        overridden_partner_id: outcome.overridden.map(Cow::Borrowed),
        code: outcome.code.map(|m| code_ref(m, table)),
        winning_click: path.winner.map(|i| click_ref(order, i, &path)),
        involved_partners: path.involved,
        unknown_codes,
        code_table_version: Cow::Borrowed(table.version()),
    };
    Decision {
        conversion,
        alerts,
        rule: outcome.rule,
        matched,
    }
}

fn outcome_view<'a>(
    outcome: &Outcome<'a>,
    winner: Option<&'a str>,
    foreign_rule: ForeignCodeRule,
) -> alerts::OutcomeView<'a> {
    alerts::OutcomeView {
        status: outcome.status,
        foreign_code_decided: matches!(
            outcome.rule,
            Rule::ForeignCodeInvalidated | Rule::ForeignCodeClickCredited
        ),
        decisive_code: outcome.code.map(|m| m.entry),
        winner,
        foreign_rule,
    }
}

fn apply_rules<'a>(
    matched: &[MatchedCode<'a>],
    path: &ClickPath<'a>,
    winner: Option<&'a str>,
    table: &'a CodeTable,
    foreign_rule: ForeignCodeRule,
) -> Outcome<'a> {
    let owner_of = |m: &MatchedCode<'a>| table.entry(m.entry).owner_partner_id.as_deref();
    let chosen = matched
        .iter()
        .filter(|m| m.validity.is_ok())
        .min_by_key(|m| {
            let entry = table.entry(m.entry);
            (
                entry.credit_policy != Some(CreditPolicy::Always),
                owner_of(m) != winner || winner.is_none(),
                m.position,
            )
        })
        .copied();
    if let Some(code) = chosen {
        let entry = table.entry(code.entry);
        // A valid code is always a TRACKING code, which has an owner and a credit policy.
        let (Some(owner), Some(policy)) = (entry.owner_partner_id.as_deref(), entry.credit_policy)
        else {
            return Outcome::invalid(
                InvalidReason::CodeRestricted,
                None,
                Some(code),
                Rule::InvalidCodeNoClick,
            );
        };
        let foreign = |q: &'a str| match foreign_rule {
            ForeignCodeRule::Invalidate => Outcome::invalid(
                InvalidReason::CodeOwnedByOtherPartner,
                Some(q),
                Some(code),
                Rule::ForeignCodeInvalidated,
            ),
            ForeignCodeRule::CreditClickWinner => {
                Outcome::credited(q, Basis::Click, Some(code), Rule::ForeignCodeClickCredited)
            }
        };
        return match (policy, winner) {
            (CreditPolicy::Always, _) => Outcome {
                overridden: winner.filter(|q| *q != owner),
                ..Outcome::credited(owner, Basis::CodeAlways, Some(code), Rule::AlwaysCode)
            },
            (CreditPolicy::Involved, _) if path.involved.iter().any(|p| p == owner) => {
                Outcome::credited(
                    owner,
                    Basis::CodeInvolved,
                    Some(code),
                    Rule::InvolvedOwnerCredited,
                )
            }
            (CreditPolicy::Winner, Some(q)) if q == owner => Outcome::credited(
                owner,
                Basis::CodeWinner,
                Some(code),
                Rule::WinnerOwnerCredited,
            ),
            (CreditPolicy::Involved | CreditPolicy::Winner, Some(q)) => foreign(q),
            (CreditPolicy::Involved, None) => Outcome::invalid(
                InvalidReason::CodeOwnerNotInvolved,
                Some(owner),
                Some(code),
                Rule::OwnerNotInvolved,
            ),
            (CreditPolicy::Winner, None) => Outcome::invalid(
                InvalidReason::CodeOwnerNotWinner,
                Some(owner),
                Some(code),
                Rule::OwnerNotWinner,
            ),
        };
    }
    if let Some(first_invalid) = matched.first().copied() {
        let entry = table.entry(first_invalid.entry);
        let reason = first_invalid
            .validity
            .err()
            .unwrap_or(InvalidReason::CodeInactive);
        return match winner {
            Some(q) if entry.code_type == CodeType::Restricted => Outcome::invalid(
                InvalidReason::CodeRestricted,
                Some(q),
                Some(first_invalid),
                Rule::RestrictedCodeWithClick,
            ),
            Some(q) => Outcome::credited(
                q,
                Basis::Click,
                Some(first_invalid),
                Rule::InvalidCodeClickCredited,
            ),
            None => Outcome::invalid(
                reason,
                owner_of(&first_invalid),
                Some(first_invalid),
                Rule::InvalidCodeNoClick,
            ),
        };
    }
    match winner {
        Some(q) => Outcome::credited(q, Basis::Click, None, Rule::NoCodeClickCredited),
        None => Outcome {
            status: Status::Unattributed,
            invalid_reason: None,
            ..Outcome::invalid(InvalidReason::CodeInactive, None, None, Rule::Unattributed)
        },
    }
}

fn code_ref<'a>(m: MatchedCode<'a>, table: &'a CodeTable) -> CodeRef<'a> {
    let entry = table.entry(m.entry);
    CodeRef {
        entered: Cow::Borrowed(m.entered),
        code_id: Cow::Borrowed(table.code_id(m.entry)),
        match_type: entry.match_type,
        owner_partner_id: entry.owner_partner_id.as_deref().map(Cow::Borrowed),
        credit_policy: entry.credit_policy,
        deal_id: entry.deal_id.as_deref().map(Cow::Borrowed),
    }
}

fn click_ref<'a>(order: &'a ValidOrder<'a>, index: usize, path: &ClickPath<'a>) -> ClickRef<'a> {
    let touchpoint = &order.order.touchpoints[index];
    ClickRef {
        partner_id: Cow::Borrowed(&touchpoint.partner_id),
        click_id: Cow::Borrowed(&touchpoint.click_id),
        ts: Cow::Borrowed(&touchpoint.ts),
        credit_group: path.winner_group,
    }
}
