//! CUSTOMER_LIMIT_EXCEEDED: one customer's uses of a code over its lifetime
//! (`c:<code_id>:<customer ref>`, once per identifier the order carries) against the code's
//! `Customer Limit`.

use serde_json::json;

use super::limit::LimitCount;
use crate::codes::CodeEntry;
use crate::detectors::Detectors;
use crate::detectors::plan::{CodePart, Planner};
use crate::detectors::report::{CodeUse, Finding, Reading, evidence};
use crate::schema::{AlertKind, InvalidReason, ValidOrder};

/// A pseudonymised identifier of the order's customer (or, for enumeration, of an actor).
#[derive(Debug, Clone)]
pub struct IdentityRef {
    /// `customer_id`, `email`, `device` or `ip`.
    pub kind: &'static str,
    pub reference: String,
    /// The reference under the key being rotated out, during a rotation.
    pub previous: Option<String>,
}

impl IdentityRef {
    pub(in crate::detectors) fn new(
        detectors: &Detectors,
        kind: &'static str,
        value: &str,
    ) -> IdentityRef {
        IdentityRef {
            kind,
            reference: detectors.pseudonym(kind, value),
            previous: detectors.previous_pseudonym(kind, value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CustomerCount {
    pub count: LimitCount,
    pub customer: IdentityRef,
}

/// The customer identifiers of an order, pseudonymised: the customer id and the email hash.
pub(in crate::detectors) fn customer_refs(
    detectors: &Detectors,
    order: &ValidOrder<'_>,
) -> Vec<IdentityRef> {
    let mut refs = Vec::new();
    if let Some(customer) = &order.order.customer {
        if let Some(id) = customer.id.as_deref().filter(|v| !v.trim().is_empty()) {
            refs.push(IdentityRef::new(detectors, "customer_id", id));
        }
        if let Some(email) = customer
            .email_sha256
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            let email = email.to_ascii_lowercase();
            refs.push(IdentityRef::new(detectors, "email", &email));
        }
    }
    refs
}

pub(in crate::detectors) fn plan(
    p: &mut Planner<'_>,
    entry: &CodeEntry,
    code_id: &str,
    customers: &[IdentityRef],
) -> Vec<CustomerCount> {
    let Some(limit) = entry.customer_limit.filter(|_| p.thresholds.customer_limit) else {
        return Vec::new();
    };
    let limit = u64::from(limit);
    customers
        .iter()
        .map(|customer| {
            let key = |reference: &str| format!("{}c:{code_id}:{reference}", p.base);
            let merge_from = customer.previous.as_deref().map(key);
            CustomerCount {
                count: LimitCount::plan(p, key(&customer.reference), merge_from, limit),
                customer: customer.clone(),
            }
        })
        .collect()
}

/// Adds a finding per customer whose gate fires; returns the reason to invalidate when this
/// order took any of its customers past the limit.
pub(in crate::detectors) fn report<'a>(
    part: &CodePart,
    code: CodeUse<'a>,
    reading: &Reading<'_>,
    findings: &mut Vec<Finding<'a>>,
) -> Option<InvalidReason> {
    let mut breached = false;
    for CustomerCount { count, customer } in &part.customers {
        let uses = count.read(reading);
        breached |= uses.breached;
        if uses.fires {
            findings.push(Finding {
                kind: AlertKind::CustomerLimitExceeded,
                severity: AlertKind::CustomerLimitExceeded.severity(),
                subject: vec![code.code_id.to_string(), customer.reference.clone()],
                evidence: evidence(uses.result, 0),
                code: Some(code),
                other_partner: None,
                count: uses.uses - count.limit,
                detail: json!({
                    "customer_limit": count.limit,
                    "uses": uses.uses,
                    "customer_ref": customer.reference,
                    "customer_ref_kind": customer.kind,
                    "key_id": reading.key_id,
                    "invalidates": reading.thresholds.invalidate_on_limit_breach,
                }),
            });
        }
    }
    breached.then_some(InvalidReason::CustomerLimitExceeded)
}
