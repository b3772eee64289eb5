//! USAGE_LIMIT_EXCEEDED, and SINGLE_USE_CODE_REUSED for a limit of one: uses of a code over its
//! lifetime (`u:<code_id>`) against the code's `Usage Limit`.

use serde_json::json;

use super::limit::LimitCount;
use crate::codes::CodeEntry;
use crate::detectors::plan::{CodePart, Planner};
use crate::detectors::report::{CodeUse, Finding, Reading, evidence};
use crate::schema::{AlertKind, InvalidReason};

pub(in crate::detectors) fn plan(
    p: &mut Planner<'_>,
    entry: &CodeEntry,
    code_id: &str,
) -> Option<LimitCount> {
    if !p.thresholds.usage_limit {
        return None;
    }
    let limit = u64::from(entry.usage_limit?);
    let key = format!("{}u:{code_id}", p.base);
    Some(LimitCount::plan(p, key, None, limit))
}

/// Adds the finding when the gate fires; returns the reason to invalidate when this order went
/// past the limit.
pub(in crate::detectors) fn report<'a>(
    part: &CodePart,
    code: CodeUse<'a>,
    reading: &Reading<'_>,
    findings: &mut Vec<Finding<'a>>,
) -> Option<InvalidReason> {
    let count = part.usage?;
    let uses = count.read(reading);
    if uses.fires {
        let kind = if count.limit == 1 {
            AlertKind::SingleUseCodeReused
        } else {
            AlertKind::UsageLimitExceeded
        };
        let evidence = evidence(uses.result, 0);
        let first_redeemer = evidence.first().cloned();
        findings.push(Finding {
            kind,
            severity: kind.severity(),
            subject: vec![code.code_id.to_string()],
            evidence,
            code: Some(code),
            other_partner: None,
            count: uses.uses - count.limit,
            detail: json!({
                "usage_limit": count.limit,
                "uses": uses.uses,
                "first_redeemer_order_id": first_redeemer,
                "invalidates": reading.thresholds.invalidate_on_limit_breach,
            }),
        });
    }
    uses.breached.then_some(InvalidReason::UsageLimitExceeded)
}
