//! Alerts that follow from one order on its own (the stateful detectors live elsewhere).

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::MatchedCode;
use crate::codes::{CodeTable, EntryId};
use crate::ids::alert_id;
use crate::schema::{Alert, AlertKind, Detail, InvalidReason, Status, ValidOrder};
use crate::settings::ForeignCodeRule;

/// The parts of the decision the alerts need.
pub struct OutcomeView<'o> {
    pub status: Status,
    pub foreign_code_decided: bool,
    pub decisive_code: Option<EntryId>,
    pub winner: Option<&'o str>,
    pub foreign_rule: ForeignCodeRule,
}

fn kind_for(reason: InvalidReason) -> Option<AlertKind> {
    match reason {
        InvalidReason::CodeExpired => Some(AlertKind::ExpiredCodeUsed),
        InvalidReason::CodeNotYetActive => Some(AlertKind::NotYetActiveCodeUsed),
        InvalidReason::CodeInactive => Some(AlertKind::InactiveCodeUsed),
        InvalidReason::CodeRestricted => Some(AlertKind::RestrictedCodeUsed),
        InvalidReason::PartnerContractInactive => Some(AlertKind::CodeOwnerContractInactive),
        _ => None,
    }
}

/// Builds alerts that share the order's identity; ids are derived from the kind, the order and
/// the code, so the same order always raises the same alerts with the same ids.
struct OrderAlerts<'a, 't> {
    order: &'a ValidOrder<'a>,
    table: &'t CodeTable,
    alerts: Vec<Alert<'a>>,
}

impl<'a, 't: 'a> OrderAlerts<'a, 't> {
    fn push(
        &mut self,
        kind: AlertKind,
        code: Option<&MatchedCode<'a>>,
        other_partner: Option<&'a str>,
        detail: Detail<'a>,
    ) {
        let order = &self.order.order;
        let code_id = code.map(|m| self.table.code_id(m.entry));
        let id = alert_id(&[
            kind.as_str(),
            &order.program_id,
            &order.event_type,
            &order.order_id,
            code_id.unwrap_or(""),
        ]);
        if self.alerts.iter().any(|a| a.alert_id == id) {
            return;
        }
        self.alerts.push(Alert {
            schema_version: crate::schema::alert::SCHEMA_VERSION,
            alert_id: id,
            kind,
            severity: kind.severity(),
            program_id: Cow::Borrowed(&order.program_id),
            order_ids: vec![Cow::Borrowed(&order.order_id)],
            code_id: code_id.map(Cow::Borrowed),
            code: code.map(|m| Cow::Borrowed(m.entered)),
            owner_partner_id: code
                .and_then(|m| self.table.entry(m.entry).owner_partner_id.as_deref())
                .map(Cow::Borrowed),
            other_partner_id: other_partner.map(Cow::Borrowed),
            event_time: Cow::Borrowed(&order.event_time),
            code_table_version: Cow::Borrowed(self.table.version()),
            count: 1,
            detail,
        });
    }
}

pub fn per_order_alerts<'a, 't: 'a>(
    order: &'a ValidOrder<'a>,
    table: &'t CodeTable,
    matched: &[MatchedCode<'a>],
    outcome: &OutcomeView<'a>,
) -> Vec<Alert<'a>> {
    let mut out = OrderAlerts {
        order,
        table,
        alerts: Vec::new(),
    };
    for code in matched {
        let entry = table.entry(code.entry);
        if let Err(reason) = code.validity
            && let Some(kind) = kind_for(reason)
        {
            let detail = Detail::CodeValidity {
                reason: reason.as_str(),
                active_start: entry.start,
                active_end: entry.end,
                code_type: entry.code_type,
                conversion_status: outcome.status,
            };
            let other = outcome
                .winner
                .filter(|w| Some(*w) != entry.owner_partner_id.as_deref());
            out.push(kind, Some(code), other, detail);
        }
        if code.owners_differ
            && let Some(program) = table.program(&order.order.program_id)
        {
            let candidates: Vec<Value> = table
                .all_matches(program, code.entered)
                .into_iter()
                .map(|id| {
                    let e = table.entry(id);
                    json!({"code_id": table.code_id(id), "owner_partner_id": e.owner_partner_id, "priority": e.priority})
                })
                .collect();
            out.push(
                AlertKind::AmbiguousCodeMatch,
                Some(code),
                None,
                Detail::Value(json!({ "matches": candidates })),
            );
        }
    }
    let valid_owners = || {
        matched
            .iter()
            .filter(|m| m.validity.is_ok())
            .filter_map(|m| table.entry(m.entry).owner_partner_id.as_deref())
    };
    // Nearly every order has at most one owner among its codes: find that out before building
    // the set the alert lists.
    let mut owners = valid_owners();
    let first_owner = owners.next();
    if owners.any(|owner| Some(owner) != first_owner) {
        let valid_owners: BTreeSet<&str> = valid_owners().collect();
        let decisive = matched
            .iter()
            .find(|m| Some(m.entry) == outcome.decisive_code);
        let code_ids = matched
            .iter()
            .filter(|m| m.validity.is_ok())
            .map(|m| table.code_id(m.entry))
            .collect();
        let detail = Detail::PartnerCodes {
            owners: valid_owners.into_iter().collect(),
            code_ids,
        };
        out.push(AlertKind::MultiplePartnerCodes, decisive, None, detail);
    }
    if outcome.foreign_code_decided
        && let Some(code) = matched
            .iter()
            .find(|m| Some(m.entry) == outcome.decisive_code)
    {
        let detail = Detail::UnauthorizedPartner {
            credit_policy: table.entry(code.entry).credit_policy,
            foreign_code: outcome.foreign_rule,
            conversion_status: outcome.status,
        };
        out.push(
            AlertKind::CodeUsedByUnauthorizedPartner,
            Some(code),
            outcome.winner,
            detail,
        );
    }
    out.alerts
}

#[cfg(test)]
mod tests {
    use crate::codes::load::read_codes;
    use crate::codes::table::BuildOptions;
    use crate::schema::{AlertKind, parse_order};
    use crate::settings::{AttributionSettings, InputLimits};

    use super::*;

    #[test]
    fn multiple_partner_codes_lists_owners_and_codes() {
        let csv = "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n\
                   BBB,1,B,TRACKING,ALWAYS,LI\n\
                   AAA,1,A,TRACKING,ALWAYS,LI\n";
        let entries = read_codes(csv.as_bytes(), "t.csv").expect("valid codes");
        let table = CodeTable::build(entries, Vec::new(), "v", "t", BuildOptions::default())
            .expect("builds");
        let record = br#"{"order_id":"o","program_id":"1","event_type":"sale","event_time":"2026-01-01T00:00:00Z","promo_codes":["bbb","aaa"]}"#;
        let order = parse_order(record, &InputLimits::default()).expect("valid order");
        let decision =
            crate::attribution::decide(record, &order, &table, &AttributionSettings::default());
        let alert = decision
            .alerts
            .iter()
            .find(|a| a.kind == AlertKind::MultiplePartnerCodes)
            .expect("two owners");
        assert_eq!(
            alert.detail.to_value(),
            json!({ "owners": ["A", "B"], "code_ids": ["LI:BBB", "LI:AAA"] })
        );
    }
}
