//! A person-readable account of one decision, step by step, built from the same functions the
//! decision uses so it cannot drift from what the engine does.

use std::fmt::Write;

use crate::attribution::clicks::{credit_group, eligibility};
use crate::attribution::{code_validity, decide};
use crate::codes::normalize::{exact_key, trim_entered};
use crate::codes::{CodeEntry, CodeTable, MatchType};
use crate::matcher::ProgramMatcher;
use crate::schema::{Conversion, parse_order};
use crate::settings::Settings;
use crate::timefmt::{Instant, format_instant};

/// The spelling a value has in the JSON records and CSV files (`CREDITED`, `PREFERRED`, ...),
/// so what a person reads here is what they will find in the data.
fn spelled<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// Explains the decision for one order record. Writing to a `String` cannot fail, so the
/// `fmt::Result`s below are discarded on purpose.
pub fn explain(record: &[u8], table: &CodeTable, settings: &Settings) -> String {
    let mut out = String::new();
    let order = match parse_order(record, &settings.limits) {
        Ok(order) => order,
        Err(err) => {
            let _ = writeln!(
                out,
                "The order is rejected before any decision ({}): {err}",
                err.reason()
            );
            return out;
        }
    };
    let o = &order.order;
    let at = order.event_time;
    let _ = writeln!(
        out,
        "Order {} in program {} ({}), event time {} = {}",
        o.order_id,
        o.program_id,
        o.event_type,
        o.event_time,
        format_instant(&at)
    );
    if o.amount.is_some() || o.discount.is_some() || o.currency.is_some() {
        let number = |n: &Option<crate::schema::JsonNumber<'_>>| {
            n.as_ref().map_or("null", |n| n.as_str()).to_owned()
        };
        let _ = writeln!(
            out,
            "Money, carried to the conversion as written: amount {}, discount {}, currency {}",
            number(&o.amount),
            number(&o.discount),
            o.currency.as_deref().unwrap_or("null")
        );
    }
    let _ = writeln!(out, "Code table version {}\n", table.version());

    let _ = writeln!(out, "1. Promo codes ({} entered)", o.promo_codes.len());
    let program = table.program(&o.program_id);
    if program.is_none() && !o.promo_codes.is_empty() {
        let _ = writeln!(
            out,
            "   program {} has no codes in the table: every code is unknown",
            o.program_id
        );
    }
    for (i, entered) in o.promo_codes.iter().enumerate() {
        describe_code(
            &mut out,
            table,
            program,
            entered,
            at,
            &format!("#{}", i + 1),
        );
    }

    let _ = writeln!(out, "\n2. Touchpoints ({})", o.touchpoints.len());
    for (i, (tp, &ts)) in o
        .touchpoints
        .iter()
        .zip(&order.touchpoint_times)
        .enumerate()
    {
        let partner = table.partner_terms(&tp.partner_id);
        let verdict = match eligibility(tp, ts, at, partner) {
            Ok(()) => "eligible".to_string(),
            Err(why) => format!("not eligible: {why}"),
        };
        let _ = writeln!(
            out,
            "   #{} partner {} click {} at {} ({}, group {}, window {} days): {verdict}",
            i + 1,
            tp.partner_id,
            tp.click_id,
            tp.ts,
            spelled(&tp.kind),
            spelled(&credit_group(tp, partner)),
            partner.referral_window_days
        );
    }

    let decision = decide(record, &order, table, &settings.attribution);
    let c = &decision.conversion;
    let _ = writeln!(out, "\n3. Click path");
    match &c.winning_click {
        Some(click) => {
            let _ = writeln!(
                out,
                "   winning click {} by partner {} (highest credit group {}, then latest, ties to the last listed)",
                click.click_id,
                click.partner_id,
                spelled(&click.credit_group)
            );
        }
        None => {
            let _ = writeln!(out, "   no eligible click, so no winner");
        }
    }
    let involved: Vec<&str> = c.involved_partners.iter().map(|p| p.as_ref()).collect();
    let _ = writeln!(
        out,
        "   involved partners: {}",
        if involved.is_empty() {
            "none".into()
        } else {
            involved.join(", ")
        }
    );

    let _ = writeln!(out, "\n4. Decision\n   rule: {}", decision.rule);
    outcome_line(&mut out, c);
    if !decision.alerts.is_empty() {
        let _ = writeln!(out, "\n5. Alerts");
        for alert in &decision.alerts {
            let _ = writeln!(
                out,
                "   {} ({}) code {}",
                alert.kind.as_str(),
                spelled(&alert.severity),
                alert.code.as_deref().unwrap_or("-")
            );
        }
    }
    out
}

/// How one entered code matches a program's entries, and whether the one that applies is valid
/// at `at`; shared by `explain` and `codes show`.
pub fn describe_code(
    out: &mut String,
    table: &CodeTable,
    program: Option<&ProgramMatcher>,
    entered: &str,
    at: Instant,
    label: &str,
) {
    let _ = writeln!(
        out,
        "   {label} {:?}: exact key {:?}, regex input {:?}",
        entered,
        exact_key(entered),
        trim_entered(entered)
    );
    let matches = program
        .map(|p| table.all_matches(p, entered))
        .unwrap_or_default();
    if matches.is_empty() {
        let _ = writeln!(out, "      matches nothing: unknown code");
    }
    for (rank, &id) in matches.iter().enumerate() {
        let entry = table.entry(id);
        let role = if rank == 0 {
            "applies"
        } else {
            "also matches, loses on precedence"
        };
        let _ = writeln!(
            out,
            "      {} ({role}): {} owner {} policy {} priority {}, table line {}",
            table.code_id(id),
            match entry.match_type {
                MatchType::Exact => "exact",
                MatchType::Regex => "regex",
            },
            entry
                .owner_partner_id
                .as_deref()
                .unwrap_or("none (restricted)"),
            entry
                .credit_policy
                .map_or("none".to_string(), |p| spelled(&p)),
            entry.priority,
            entry.source_line
        );
        if rank == 0 {
            validity_steps(out, entry, at, table);
        }
    }
}

fn validity_steps(out: &mut String, entry: &CodeEntry, at: Instant, table: &CodeTable) {
    let when = |t: &Option<Instant>| t.as_ref().map_or("none".to_string(), format_instant);
    let _ = writeln!(
        out,
        "      state {}; active from {} (inclusive) to {} (exclusive), dates read in {}; type {}",
        spelled(&entry.state),
        when(&entry.start),
        when(&entry.end),
        entry.timezone,
        spelled(&entry.code_type)
    );
    if let Some(owner) = &entry.owner_partner_id {
        let partner = table.partner_terms(owner);
        let _ = writeln!(
            out,
            "      owner {owner}: status {}, contract {} to {}",
            spelled(&partner.status),
            when(&partner.contract_start),
            when(&partner.contract_end)
        );
    }
    let verdict = match code_validity(entry, at, table) {
        Ok(()) => "valid at the event time".to_string(),
        Err(reason) => format!("invalid at the event time: {}", reason.as_str()),
    };
    let _ = writeln!(out, "      => {verdict}");
}

fn outcome_line(out: &mut String, c: &Conversion<'_>) {
    let _ = write!(out, "   outcome: {}", spelled(&c.status));
    if let Some(basis) = c.basis {
        let _ = write!(out, " basis {}", spelled(&basis));
    }
    if let Some(partner) = &c.partner_id {
        let _ = write!(out, ", credited partner {partner}");
    }
    if let Some(reason) = c.invalid_reason {
        let _ = write!(out, ", reason {}", reason.as_str());
    }
    if let Some(partner) = &c.invalid_partner_id {
        let _ = write!(out, ", invalid partner {partner}");
    }
    if let Some(partner) = &c.overridden_partner_id {
        let _ = write!(out, ", overridden click winner {partner}");
    }
    let _ = writeln!(out);
}
