//! Misuse alerts (`schema/alert.schema.json`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::alert_detail::Detail;
use super::json_out::{ObjectWriter, field};

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
    // Adjustments (`src/reversals`): refunds and cancellations of earlier decisions.
    AdjustmentWithoutConversion,
    AdjustmentAfterLock,
    OverReversal,
    /// A stateful detector over adjustments (`src/detectors/kinds/reversal_rate.rs`).
    HighReversalRate,
}

impl AlertKind {
    pub const ALL: [AlertKind; 21] = [
        AlertKind::ExpiredCodeUsed,
        AlertKind::NotYetActiveCodeUsed,
        AlertKind::InactiveCodeUsed,
        AlertKind::RestrictedCodeUsed,
        AlertKind::CodeOwnerContractInactive,
        AlertKind::CodeUsedByUnauthorizedPartner,
        AlertKind::MultiplePartnerCodes,
        AlertKind::AmbiguousCodeMatch,
        AlertKind::ColdCodeUseRate,
        AlertKind::CodeVelocitySpike,
        AlertKind::UsageLimitExceeded,
        AlertKind::SingleUseCodeReused,
        AlertKind::CustomerLimitExceeded,
        AlertKind::CodeEnumerationSuspected,
        AlertKind::UnknownCodeRate,
        AlertKind::SelfReferralSuspected,
        AlertKind::DuplicateOrderId,
        AlertKind::AdjustmentWithoutConversion,
        AlertKind::AdjustmentAfterLock,
        AlertKind::OverReversal,
        AlertKind::HighReversalRate,
    ];

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
            AlertKind::AdjustmentWithoutConversion => "ADJUSTMENT_WITHOUT_CONVERSION",
            AlertKind::AdjustmentAfterLock => "ADJUSTMENT_AFTER_LOCK",
            AlertKind::OverReversal => "OVER_REVERSAL",
            AlertKind::HighReversalRate => "HIGH_REVERSAL_RATE",
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
            | AlertKind::CodeEnumerationSuspected
            | AlertKind::AdjustmentAfterLock
            | AlertKind::HighReversalRate => Severity::Medium,
            AlertKind::MultiplePartnerCodes
            | AlertKind::UnknownCodeRate
            | AlertKind::SelfReferralSuspected
            | AlertKind::DuplicateOrderId
            | AlertKind::AdjustmentWithoutConversion
            | AlertKind::OverReversal => Severity::Low,
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

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
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
    pub detail: Detail<'a>,
}

impl Alert<'_> {
    /// Appends the record's JSON to `out`, byte for byte what `serde_json::to_writer` writes for
    /// it.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = ObjectWriter::open(out);
        o.u64(field!("schema_version"), u64::from(self.schema_version));
        o.str(field!("alert_id"), &self.alert_id)?;
        o.word(field!("kind"), self.kind.as_str());
        o.word(field!("severity"), self.severity.as_str());
        o.str(field!("program_id"), &self.program_id)?;
        o.str_array(
            field!("order_ids"),
            self.order_ids.iter().map(AsRef::as_ref),
        )?;
        o.opt_str(field!("code_id"), self.code_id.as_deref())?;
        o.opt_str(field!("code"), self.code.as_deref())?;
        o.opt_str(field!("owner_partner_id"), self.owner_partner_id.as_deref())?;
        o.opt_str(field!("other_partner_id"), self.other_partner_id.as_deref())?;
        o.str(field!("event_time"), &self.event_time)?;
        o.str(field!("code_table_version"), &self.code_table_version)?;
        o.u64(field!("count"), self.count);
        self.detail.write_json(o.key(field!("detail")))?;
        o.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::option::of;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const KINDS: [AlertKind; 3] = [
        AlertKind::MultiplePartnerCodes,
        AlertKind::AmbiguousCodeMatch,
        AlertKind::CodeUsedByUnauthorizedPartner,
    ];
    const SEVERITIES: [Severity; 4] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
    ];

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_:-]{0,12}",
            any::<String>(),
            r#"["\\\x00-\x1fé]{0,4}"#
        ]
    }

    prop_compose! {
        fn alert()(
            schema_version in any::<u32>(),
            kind in 0..KINDS.len(),
            severity in 0..SEVERITIES.len(),
            strings in proptest::collection::vec(text(), 4),
            optional in proptest::collection::vec(of(text()), 4),
            order_ids in proptest::collection::vec(text(), 0..3),
            count in any::<u64>(),
            detail in of(text()),
        ) -> Alert<'static> {
            Alert {
                schema_version,
                alert_id: strings[0].clone(),
                kind: KINDS[kind],
                severity: SEVERITIES[severity],
                program_id: Cow::Owned(strings[1].clone()),
                order_ids: order_ids.into_iter().map(Cow::Owned).collect(),
                code_id: optional[0].clone().map(Cow::Owned),
                code: optional[1].clone().map(Cow::Owned),
                owner_partner_id: optional[2].clone().map(Cow::Owned),
                other_partner_id: optional[3].clone().map(Cow::Owned),
                event_time: Cow::Owned(strings[2].clone()),
                code_table_version: Cow::Owned(strings[3].clone()),
                count,
                detail: Detail::Value(json!({ "reason": detail, "codes": [1, 2.5, null] })),
            }
        }
    }

    proptest! {
        #[test]
        fn write_json_is_serde_json_byte_for_byte(alert in alert()) {
            let mut ours = Vec::new();
            alert.write_json(&mut ours).expect("writes to a Vec");
            let expected = serde_json::to_vec(&alert).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected));
        }
    }

    #[test]
    fn severity_spelling_is_the_serde_spelling() {
        for severity in SEVERITIES {
            let name = serde_json::to_string(&severity).expect("serializes");
            assert_eq!(format!("\"{}\"", severity.as_str()), name);
        }
    }
}
