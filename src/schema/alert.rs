//! Misuse alerts (`schema/alert.schema.json`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;
/// Evidence is capped so that a burst cannot produce an unbounded record.
pub const MAX_EVIDENCE_ORDERS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    ExpiredCodeUsed,
    NotYetActiveCodeUsed,
    InactiveCodeUsed,
    RestrictedCodeUsed,
    CodeOwnerContractInactive,
    CodeUsedByUnauthorizedPartner,
    MultiplePartnerCodes,
    AmbiguousCodeMatch,
    // Stateful detectors (`src/detectors`): they look across orders.
    ColdCodeUseRate,
    CodeVelocitySpike,
    UsageLimitExceeded,
    SingleUseCodeReused,
    CustomerLimitExceeded,
    CodeEnumerationSuspected,
    UnknownCodeRate,
    SelfReferralSuspected,
    DuplicateOrderId,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ExpiredCodeUsed => "EXPIRED_CODE_USED",
            AlertKind::NotYetActiveCodeUsed => "NOT_YET_ACTIVE_CODE_USED",
            AlertKind::InactiveCodeUsed => "INACTIVE_CODE_USED",
            AlertKind::RestrictedCodeUsed => "RESTRICTED_CODE_USED",
            AlertKind::CodeOwnerContractInactive => "CODE_OWNER_CONTRACT_INACTIVE",
            AlertKind::CodeUsedByUnauthorizedPartner => "CODE_USED_BY_UNAUTHORIZED_PARTNER",
            AlertKind::MultiplePartnerCodes => "MULTIPLE_PARTNER_CODES",
            AlertKind::AmbiguousCodeMatch => "AMBIGUOUS_CODE_MATCH",
            AlertKind::ColdCodeUseRate => "COLD_CODE_USE_RATE",
            AlertKind::CodeVelocitySpike => "CODE_VELOCITY_SPIKE",
            AlertKind::UsageLimitExceeded => "USAGE_LIMIT_EXCEEDED",
            AlertKind::SingleUseCodeReused => "SINGLE_USE_CODE_REUSED",
            AlertKind::CustomerLimitExceeded => "CUSTOMER_LIMIT_EXCEEDED",
            AlertKind::CodeEnumerationSuspected => "CODE_ENUMERATION_SUSPECTED",
            AlertKind::UnknownCodeRate => "UNKNOWN_CODE_RATE",
            AlertKind::SelfReferralSuspected => "SELF_REFERRAL_SUSPECTED",
            AlertKind::DuplicateOrderId => "DUPLICATE_ORDER_ID",
        }
    }

    /// How urgently a monitoring team should look: a partner being paid for a code it does not
    /// own, or through a code nobody may be credited through, or a code redeemed beyond its
    /// limit, is money going out now. The detectors raise CODE_VELOCITY_SPIKE and
    /// SELF_REFERRAL_SUSPECTED to high when the evidence is strong; this is their usual level.
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::RestrictedCodeUsed
            | AlertKind::CodeUsedByUnauthorizedPartner
            | AlertKind::UsageLimitExceeded
            | AlertKind::SingleUseCodeReused => Severity::High,
            AlertKind::ExpiredCodeUsed
            | AlertKind::NotYetActiveCodeUsed
            | AlertKind::InactiveCodeUsed
            | AlertKind::CodeOwnerContractInactive
            | AlertKind::AmbiguousCodeMatch
            | AlertKind::ColdCodeUseRate
            | AlertKind::CodeVelocitySpike
            | AlertKind::CustomerLimitExceeded
            | AlertKind::CodeEnumerationSuspected => Severity::Medium,
            AlertKind::MultiplePartnerCodes
            | AlertKind::UnknownCodeRate
            | AlertKind::SelfReferralSuspected
            | AlertKind::DuplicateOrderId => Severity::Low,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert<'a> {
    pub schema_version: u32,
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    #[serde(borrow)]
    pub program_id: Cow<'a, str>,
    #[serde(borrow)]
    pub order_ids: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub code_id: Option<Cow<'a, str>>,
    /// As entered by the customer.
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub owner_partner_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub other_partner_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
    #[serde(borrow)]
    pub code_table_version: Cow<'a, str>,
    /// Orders that gave rise to this alert (1 for a per-order alert).
    pub count: u64,
    /// Kind-specific facts; keys are listed per kind in the README.
    pub detail: serde_json::Value,
}
