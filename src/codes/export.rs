//! Writing code and partner tables back out in the bulk-upload format, so that what
//! `codes export` prints, and what the store keeps, `codes import` reads back unchanged.
//!
//! Instants are written as RFC 3339 in UTC: an offset in the text wins over the row's time zone
//! when read back, so no local time that daylight saving makes ambiguous is ever re-read.

use std::io::Write;

use super::load::{CODE_COLUMNS, PARTNER_COLUMNS};
use super::{
    CodeEntry, CodeState, CodeType, CreditGroup, CreditPolicy, MatchType, Partner, PartnerStatus,
};
use crate::timefmt::format_instant;

pub fn write_codes<W: Write>(out: W, entries: &[CodeEntry]) -> csv::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(CODE_COLUMNS)?;
    for entry in entries {
        writer.write_record(code_record(entry))?;
    }
    writer.flush()?;
    Ok(())
}

/// One row in the order of [`CODE_COLUMNS`].
pub fn code_record(entry: &CodeEntry) -> [String; 14] {
    let optional = |value: Option<&str>| value.unwrap_or_default().to_string();
    let number = |value: Option<u32>| value.map(|n| n.to_string()).unwrap_or_default();
    [
        entry.code.to_string(),
        entry.program_id.to_string(),
        optional(entry.owner_partner_id.as_deref()),
        code_type_name(entry.code_type).to_string(),
        entry
            .credit_policy
            .map(policy_name)
            .unwrap_or_default()
            .to_string(),
        match_mode_name(entry.match_type).to_string(),
        optional(entry.deal_id.as_deref()),
        entry.start.as_ref().map(format_instant).unwrap_or_default(),
        entry.end.as_ref().map(format_instant).unwrap_or_default(),
        entry.timezone.name().to_string(),
        state_name(entry.state).to_string(),
        number(entry.usage_limit),
        number(entry.customer_limit),
        if entry.priority == 0 {
            String::new()
        } else {
            entry.priority.to_string()
        },
    ]
}

pub fn write_partners<W: Write>(out: W, partners: &[Partner]) -> csv::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(PARTNER_COLUMNS)?;
    for partner in partners {
        writer.write_record([
            partner.partner_id.clone(),
            match partner.status {
                PartnerStatus::Active => "ACTIVE",
                PartnerStatus::Inactive => "INACTIVE",
            }
            .to_string(),
            partner
                .contract_start
                .as_ref()
                .map(format_instant)
                .unwrap_or_default(),
            partner
                .contract_end
                .as_ref()
                .map(format_instant)
                .unwrap_or_default(),
            partner.referral_window_days.to_string(),
            match partner.credit_group {
                CreditGroup::Preferred => "PREFERRED",
                CreditGroup::Standard => "STANDARD",
                CreditGroup::NonPreferred => "NON_PREFERRED",
            }
            .to_string(),
            partner.identity_hashes.join(";"),
        ])?;
    }
    writer.flush()?;
    Ok(())
}

pub fn code_type_name(code_type: CodeType) -> &'static str {
    match code_type {
        CodeType::Tracking => "TRACKING",
        CodeType::Restricted => "RESTRICTED",
    }
}

pub fn policy_name(policy: CreditPolicy) -> &'static str {
    match policy {
        CreditPolicy::Always => "ALWAYS",
        CreditPolicy::Involved => "INVOLVED",
        CreditPolicy::Winner => "WINNER",
    }
}

pub fn match_mode_name(match_type: MatchType) -> &'static str {
    match match_type {
        MatchType::Exact => "LI",
        MatchType::Regex => "RE",
    }
}

pub fn state_name(state: CodeState) -> &'static str {
    match state {
        CodeState::Active => "ACTIVE",
        CodeState::Expired => "EXPIRED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::load::{read_codes, read_partners};

    #[test]
    fn samples_round_trip_unchanged() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let codes = std::fs::read(root.join("samples/codes.csv")).expect("sample codes");
        let partners = std::fs::read(root.join("samples/partners.csv")).expect("sample partners");
        let entries = read_codes(codes.as_slice(), "codes.csv").expect("valid sample");
        let partner_rows = read_partners(partners.as_slice(), "partners.csv").expect("valid");

        let mut written = Vec::new();
        write_codes(&mut written, &entries).expect("write codes");
        let again = read_codes(written.as_slice(), "export.csv").expect("export reads back");
        let strip = |rows: &[CodeEntry]| {
            rows.iter()
                .map(|e| CodeEntry {
                    source_line: 0,
                    ..e.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again), strip(&entries));

        let mut written = Vec::new();
        write_partners(&mut written, &partner_rows).expect("write partners");
        let again = read_partners(written.as_slice(), "export.csv").expect("reads back");
        assert_eq!(again, partner_rows);
    }
}
