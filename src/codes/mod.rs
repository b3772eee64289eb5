//! The code table: promo codes (impact.com bulk-upload rows) and the partners who own them.
//!
//! Pure data and validation; no I/O beyond reading CSV from a `Read` the caller opens.

mod budget;
pub mod csv_safety;
pub mod edit;
pub mod export;
pub mod load;
pub mod normalize;
pub mod table;

use std::sync::Arc;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::timefmt::Instant;

pub use load::{LoadProblem, LoadProblems};
pub use table::{CodeTable, EntryId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodeType {
    Tracking,
    /// impact's second upload type: a code no partner may be credited through (staff or
    /// customer-service codes).
    Restricted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CreditPolicy {
    Always,
    Involved,
    Winner,
}

impl CodeType {
    /// The serde spelling, for writers that bypass serde.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeType::Tracking => "TRACKING",
            CodeType::Restricted => "RESTRICTED",
        }
    }
}

impl CreditPolicy {
    /// The serde spelling, for writers that bypass serde.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditPolicy::Always => "ALWAYS",
            CreditPolicy::Involved => "INVOLVED",
            CreditPolicy::Winner => "WINNER",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MatchType {
    Exact,
    Regex,
}

impl MatchType {
    /// The serde spelling, for writers that bypass serde.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Exact => "EXACT",
            MatchType::Regex => "REGEX",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodeState {
    #[default]
    Active,
    Expired,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartnerStatus {
    #[default]
    Active,
    Inactive,
}

/// impact's credit groups. The derived order is the crediting priority: a Preferred click beats
/// any Standard click, which beats any Non-Preferred click.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CreditGroup {
    NonPreferred,
    Standard,
    #[default]
    Preferred,
}

impl CreditGroup {
    /// The serde spelling, for writers that bypass serde.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditGroup::NonPreferred => "NON_PREFERRED",
            CreditGroup::Standard => "STANDARD",
            CreditGroup::Preferred => "PREFERRED",
        }
    }
}

/// One row of the code table.
///
/// A table holds a million of these, so the repeated strings (program, owner, deal) are shared
/// `Arc<str>`s interned while loading, and the code is a `Box<str>`: together that keeps an
/// entry at about half the size of plain `String`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeEntry {
    pub program_id: Arc<str>,
    /// The code as written in the table: the literal code, or the pattern of a regex code.
    pub code: Box<str>,
    pub match_type: MatchType,
    pub code_type: CodeType,
    /// The partner or media source credited through the code; `None` only for restricted codes.
    pub owner_partner_id: Option<Arc<str>>,
    /// `None` only for restricted codes.
    pub credit_policy: Option<CreditPolicy>,
    pub deal_id: Option<Arc<str>>,
    /// Inclusive; `None` = active from the beginning.
    pub start: Option<Instant>,
    /// Exclusive; `None` = never ends.
    pub end: Option<Instant>,
    /// The zone the row's local dates were read in; kept so exports and explanations show it.
    pub timezone: Tz,
    pub state: CodeState,
    pub usage_limit: Option<u32>,
    pub customer_limit: Option<u32>,
    /// Among regex codes matching one entered value, the larger number wins.
    pub priority: i32,
    /// Line in the source file, for error messages; 0 when the row did not come from a file.
    pub source_line: u32,
}

impl CodeEntry {
    /// Stable identifier of the entry within its program: the match mode and the canonical code
    /// (exact) or the pattern (regex). It survives edits of every other column, so an expired and
    /// reactivated code keeps its id.
    pub fn code_id(&self) -> String {
        match self.match_type {
            MatchType::Exact => format!("LI:{}", normalize::exact_key(&self.code)),
            MatchType::Regex => format!("RE:{}", self.code),
        }
    }
}

/// A partner's contract state, from the optional partners file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partner {
    pub partner_id: String,
    pub status: PartnerStatus,
    pub contract_start: Option<Instant>,
    pub contract_end: Option<Instant>,
    pub referral_window_days: u32,
    pub credit_group: CreditGroup,
    /// Hashes of the partner's own identities (see the partners file's `Identity Hashes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_hashes: Vec<String>,
}

pub const DEFAULT_REFERRAL_WINDOW_DAYS: u32 = 30;

impl Partner {
    /// What a partner missing from the partners file is: active, 30-day window, Preferred.
    pub fn unlisted(partner_id: &str) -> Partner {
        Partner {
            partner_id: partner_id.to_string(),
            status: PartnerStatus::Active,
            contract_start: None,
            contract_end: None,
            referral_window_days: DEFAULT_REFERRAL_WINDOW_DAYS,
            credit_group: CreditGroup::Preferred,
            identity_hashes: Vec::new(),
        }
    }

    /// Active status and a contract covering `at` (start inclusive, end exclusive).
    pub fn is_active_at(&self, at: Instant) -> bool {
        self.status == PartnerStatus::Active
            && self.contract_start.is_none_or(|start| start <= at)
            && self.contract_end.is_none_or(|end| at < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_name<T: Serialize>(value: T) -> String {
        serde_json::to_string(&value)
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    }

    #[test]
    fn as_str_is_the_serde_spelling() {
        for policy in [
            CreditPolicy::Always,
            CreditPolicy::Involved,
            CreditPolicy::Winner,
        ] {
            assert_eq!(policy.as_str(), serde_name(policy));
        }
        for match_type in [MatchType::Exact, MatchType::Regex] {
            assert_eq!(match_type.as_str(), serde_name(match_type));
        }
        for group in [
            CreditGroup::NonPreferred,
            CreditGroup::Standard,
            CreditGroup::Preferred,
        ] {
            assert_eq!(group.as_str(), serde_name(group));
        }
    }
}
