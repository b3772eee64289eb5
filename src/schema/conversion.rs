//! The conversion that goes out, one per order (`schema/conversion.schema.json`).
//!
//! Field names and enum spellings are a contract with the reporting pipelines that pay partners:
//! change them only with a new `schema_version`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::codes::{CreditGroup, CreditPolicy, MatchType};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Credited,
    Invalid,
    Unattributed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Basis {
    CodeAlways,
    CodeInvolved,
    CodeWinner,
    Click,
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
