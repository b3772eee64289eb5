//! The conversion that goes out, one per order (`schema/conversion.schema.json`).
//!
//! Field names and enum spellings are a contract with the reporting pipelines that pay partners:
//! change them only with a new `schema_version`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::json_out::{ObjectWriter, field};
use super::number::JsonNumber;
use crate::codes::{CreditGroup, CreditPolicy, MatchType};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Credited,
    Invalid,
    Unattributed,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Credited, Status::Invalid, Status::Unattributed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Credited => "CREDITED",
            Status::Invalid => "INVALID",
            Status::Unattributed => "UNATTRIBUTED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Basis {
    CodeAlways,
    CodeInvolved,
    CodeWinner,
    Click,
}

impl Basis {
    pub const ALL: [Basis; 4] = [
        Basis::CodeAlways,
        Basis::CodeInvolved,
        Basis::CodeWinner,
        Basis::Click,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Basis::CodeAlways => "CODE_ALWAYS",
            Basis::CodeInvolved => "CODE_INVOLVED",
            Basis::CodeWinner => "CODE_WINNER",
            Basis::Click => "CLICK",
        }
    }
}

/// Why a conversion is `INVALID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvalidReason {
    CodeOwnedByOtherPartner,
    CodeExpired,
    CodeNotYetActive,
    CodeInactive,
    CodeRestricted,
    CodeOwnerNotInvolved,
    CodeOwnerNotWinner,
    PartnerContractInactive,
    UsageLimitExceeded,
    CustomerLimitExceeded,
    DuplicateOrderId,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 11] = [
        InvalidReason::CodeOwnedByOtherPartner,
        InvalidReason::CodeExpired,
        InvalidReason::CodeNotYetActive,
        InvalidReason::CodeInactive,
        InvalidReason::CodeRestricted,
        InvalidReason::CodeOwnerNotInvolved,
        InvalidReason::CodeOwnerNotWinner,
        InvalidReason::PartnerContractInactive,
        InvalidReason::UsageLimitExceeded,
        InvalidReason::CustomerLimitExceeded,
        InvalidReason::DuplicateOrderId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::CodeOwnedByOtherPartner => "CODE_OWNED_BY_OTHER_PARTNER",
            InvalidReason::CodeExpired => "CODE_EXPIRED",
            InvalidReason::CodeNotYetActive => "CODE_NOT_YET_ACTIVE",
            InvalidReason::CodeInactive => "CODE_INACTIVE",
            InvalidReason::CodeRestricted => "CODE_RESTRICTED",
            InvalidReason::CodeOwnerNotInvolved => "CODE_OWNER_NOT_INVOLVED",
            InvalidReason::CodeOwnerNotWinner => "CODE_OWNER_NOT_WINNER",
            InvalidReason::PartnerContractInactive => "PARTNER_CONTRACT_INACTIVE",
            InvalidReason::UsageLimitExceeded => "USAGE_LIMIT_EXCEEDED",
            InvalidReason::CustomerLimitExceeded => "CUSTOMER_LIMIT_EXCEEDED",
            InvalidReason::DuplicateOrderId => "DUPLICATE_ORDER_ID",
        }
    }
}

/// The code the decision rested on: the chosen valid code, else the first matched invalid one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef<'a> {
    /// As the customer entered it.
    #[serde(borrow)]
    pub entered: Cow<'a, str>,
    #[serde(borrow)]
    pub code_id: Cow<'a, str>,
    pub match_type: MatchType,
    #[serde(borrow)]
    pub owner_partner_id: Option<Cow<'a, str>>,
    pub credit_policy: Option<CreditPolicy>,
    #[serde(borrow)]
    pub deal_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickRef<'a> {
    #[serde(borrow)]
    pub partner_id: Cow<'a, str>,
    #[serde(borrow)]
    pub click_id: Cow<'a, str>,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    pub credit_group: CreditGroup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion<'a> {
    pub schema_version: u32,
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub program_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
    /// The order's `amount`, `discount` and `currency` as the order gave them (null when absent).
    #[serde(borrow)]
    pub amount: Option<JsonNumber<'a>>,
    #[serde(borrow)]
    pub discount: Option<JsonNumber<'a>>,
    #[serde(borrow)]
    pub currency: Option<Cow<'a, str>>,
    pub status: Status,
    pub basis: Option<Basis>,
    #[serde(borrow)]
    pub partner_id: Option<Cow<'a, str>>,
    pub invalid_reason: Option<InvalidReason>,
    #[serde(borrow)]
    pub invalid_partner_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub overridden_partner_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub code: Option<CodeRef<'a>>,
    #[serde(borrow)]
    pub winning_click: Option<ClickRef<'a>>,
    #[serde(borrow)]
    pub involved_partners: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub unknown_codes: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub code_table_version: Cow<'a, str>,
}

impl CodeRef<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = ObjectWriter::open(out);
        o.str(field!("entered"), &self.entered)?;
        o.str(field!("code_id"), &self.code_id)?;
        o.word(field!("match_type"), self.match_type.as_str());
        o.opt_str(field!("owner_partner_id"), self.owner_partner_id.as_deref())?;
        o.opt_word(
            field!("credit_policy"),
            self.credit_policy.map(CreditPolicy::as_str),
        );
        o.opt_str(field!("deal_id"), self.deal_id.as_deref())?;
        o.close();
        Ok(())
    }
}

impl ClickRef<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = ObjectWriter::open(out);
        o.str(field!("partner_id"), &self.partner_id)?;
        o.str(field!("click_id"), &self.click_id)?;
        o.str(field!("ts"), &self.ts)?;
        o.word(field!("credit_group"), self.credit_group.as_str());
        o.close();
        Ok(())
    }
}

impl Conversion<'_> {
    /// Appends the record's JSON to `out`, byte for byte what `serde_json::to_writer` writes for
    /// it, without serde's per-field dispatch; the worker calls this once per order.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = ObjectWriter::open(out);
        o.u64(field!("schema_version"), u64::from(self.schema_version));
        o.str(field!("event_id"), &self.event_id)?;
        o.str(field!("order_id"), &self.order_id)?;
        o.str(field!("program_id"), &self.program_id)?;
        o.str(field!("event_type"), &self.event_type)?;
        o.str(field!("event_time"), &self.event_time)?;
        o.opt_number(field!("amount"), self.amount.as_ref());
        o.opt_number(field!("discount"), self.discount.as_ref());
        o.opt_str(field!("currency"), self.currency.as_deref())?;
        o.word(field!("status"), self.status.as_str());
        o.opt_word(field!("basis"), self.basis.map(Basis::as_str));
        o.opt_str(field!("partner_id"), self.partner_id.as_deref())?;
        o.opt_word(
            field!("invalid_reason"),
            self.invalid_reason.map(InvalidReason::as_str),
        );
        o.opt_str(
            field!("invalid_partner_id"),
            self.invalid_partner_id.as_deref(),
        )?;
        o.opt_str(
            field!("overridden_partner_id"),
            self.overridden_partner_id.as_deref(),
        )?;
        match &self.code {
            Some(code) => code.write_json(o.key(field!("code")))?,
            None => o.null(field!("code")),
        }
        match &self.winning_click {
            Some(click) => click.write_json(o.key(field!("winning_click")))?,
            None => o.null(field!("winning_click")),
        }
        o.str_array(
            field!("involved_partners"),
            self.involved_partners.iter().map(AsRef::as_ref),
        )?;
        o.str_array(
            field!("unknown_codes"),
            self.unknown_codes.iter().map(AsRef::as_ref),
        )?;
        o.str(field!("code_table_version"), &self.code_table_version)?;
        o.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::option::of;
    use proptest::prelude::*;

    use super::*;

    const ALL_INVALID_REASONS: [InvalidReason; 11] = InvalidReason::ALL;

    /// Any string, including ones `serde_json` must escape.
    fn text() -> impl Strategy<Value = Cow<'static, str>> {
        prop_oneof![
            "[a-zA-Z0-9_-]{0,12}",
            any::<String>(),
            r#"["\\\x00-\x1fé]{0,4}"#
        ]
        .prop_map(Cow::Owned)
    }

    fn code_ref() -> impl Strategy<Value = CodeRef<'static>> {
        (
            text(),
            text(),
            any::<bool>(),
            of(text()),
            of(0..3u8),
            of(text()),
        )
            .prop_map(|(entered, code_id, regex, owner, policy, deal)| CodeRef {
                entered,
                code_id,
                match_type: if regex {
                    MatchType::Regex
                } else {
                    MatchType::Exact
                },
                owner_partner_id: owner,
                credit_policy: policy.map(|p| {
                    [
                        CreditPolicy::Always,
                        CreditPolicy::Involved,
                        CreditPolicy::Winner,
                    ][usize::from(p)]
                }),
                deal_id: deal,
            })
    }

    /// JSON number texts in the spellings producers use: `19.99`, `100.10`, `1e2`, `-0.5E-3`.
    fn number() -> impl Strategy<Value = JsonNumber<'static>> {
        r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,10})?([eE][+-]?[0-9]{1,2})?".prop_map(|text| {
            JsonNumber::parse(text).expect("the pattern is the JSON number grammar, in range")
        })
    }

    fn click_ref() -> impl Strategy<Value = ClickRef<'static>> {
        (text(), text(), text(), 0..3u8).prop_map(|(partner_id, click_id, ts, group)| ClickRef {
            partner_id,
            click_id,
            ts,
            credit_group: [
                CreditGroup::NonPreferred,
                CreditGroup::Standard,
                CreditGroup::Preferred,
            ][usize::from(group)],
        })
    }

    prop_compose! {
        fn conversion()(
            schema_version in any::<u32>(),
            ids in proptest::collection::vec(text(), 6),
            status in 0..3u8,
            basis in of(0..4u8),
            reason in of(0..11u8),
            partners in proptest::collection::vec(of(text()), 3),
            code in of(code_ref()),
            winning_click in of(click_ref()),
            involved_partners in proptest::collection::vec(text(), 0..3),
            unknown_codes in proptest::collection::vec(text(), 0..3),
            money in proptest::collection::vec(of(number()), 2),
            currency in of(text()),
        ) -> Conversion<'static> {
            Conversion {
                schema_version,
                event_id: ids[0].clone(),
                order_id: ids[1].clone(),
                program_id: ids[2].clone(),
                event_type: ids[3].clone(),
                event_time: ids[4].clone(),
                amount: money[0].clone(),
                discount: money[1].clone(),
                currency,
                status: [Status::Credited, Status::Invalid, Status::Unattributed]
                    [usize::from(status)],
                basis: basis.map(|b| {
                    [Basis::CodeAlways, Basis::CodeInvolved, Basis::CodeWinner, Basis::Click]
                        [usize::from(b)]
                }),
                partner_id: partners[0].clone(),
                invalid_reason: reason.map(|r| ALL_INVALID_REASONS[usize::from(r)]),
                invalid_partner_id: partners[1].clone(),
                overridden_partner_id: partners[2].clone(),
                code,
                winning_click,
                involved_partners,
                unknown_codes,
                code_table_version: ids[5].clone(),
            }
        }
    }

    proptest! {
        #[test]
        fn write_json_is_serde_json_byte_for_byte(conversion in conversion()) {
            let mut ours = b"prefix".to_vec();
            conversion.write_json(&mut ours).expect("writes to a Vec");
            let mut expected = b"prefix".to_vec();
            serde_json::to_writer(&mut expected, &conversion).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected));
        }
    }

    #[test]
    fn enum_spellings_are_serde_spellings() {
        fn serde_name<T: Serialize>(value: T) -> String {
            serde_json::to_string(&value)
                .expect("serializes")
                .trim_matches('"')
                .to_owned()
        }
        for reason in ALL_INVALID_REASONS {
            assert_eq!(reason.as_str(), serde_name(reason));
        }
        for status in [Status::Credited, Status::Invalid, Status::Unattributed] {
            assert_eq!(status.as_str(), serde_name(status));
        }
        for basis in [
            Basis::CodeAlways,
            Basis::CodeInvolved,
            Basis::CodeWinner,
            Basis::Click,
        ] {
            assert_eq!(basis.as_str(), serde_name(basis));
        }
    }
}
