//! `explain --history FILE ADJUSTMENT.json`: an adjustment's path for people — the stored
//! original, the adjustments before it, the lock, the delta — from the same functions the
//! engine uses. The history (the order's earlier events, as JSON lines) is run through the
//! engine first, with the store in memory, exactly as the offline mode would.

use std::fmt::Write;
use std::sync::Arc;

use super::adjust::{Effect, after_lock, evaluate};
use super::output::{Finished, Reversals};
use super::store::DecisionReply;
use super::{Request, Summary};
use crate::codes::CodeTable;
use crate::detectors::{DetectorState, MemoryState};
use crate::engine::{Engine, Outputs};
use crate::schema::adjustment::parse_adjustment_fields;
use crate::schema::parse_order;
use crate::settings::Settings;

/// Explains adjustment `record` after the events of `history`. Writing to a `String` cannot
/// fail, so the `fmt::Result`s are discarded on purpose.
pub fn explain_adjustment(
    record: &[u8],
    history: &[&[u8]],
    table: &CodeTable,
    settings: &Settings,
) -> String {
    let mut settings = settings.clone();
    settings.reversals.enabled = true;
    let mut out = String::new();
    let order = match parse_order(record, &settings.limits) {
        Ok(order) => order,
        Err(err) => {
            let _ = writeln!(out, "The event is rejected ({}): {err}", err.reason());
            return out;
        }
    };
    let o = &order.order;
    if !settings.reversals.is_adjustment(&o.event_type) {
        let _ = writeln!(
            out,
            "event_type {:?} is not one of reversals.adjustment_types {:?}: this is an order, not an adjustment.",
            o.event_type, settings.reversals.adjustment_types
        );
        return out;
    }
    let request = match parse_adjustment_fields(record)
        .and_then(|fields| Request::read(record, &order, &fields))
    {
        Ok(request) => request,
        Err(err) => {
            let _ = writeln!(out, "The adjustment is rejected ({}): {err}", err.reason());
            return out;
        }
    };
    let mut state = MemoryState::new();
    let engine = Engine::new(Arc::new(settings.clone()));
    let mut outputs = Outputs::default();
    if engine
        .run(table, Some(&mut state), history, &mut outputs)
        .is_err()
    {
        let _ = writeln!(out, "The history could not be run.");
        return out;
    }
    let _ = writeln!(
        out,
        "1. Adjustment {:?} of order {:?} (program {}), {} at {}, reason {}; new total {}.",
        request.adjustment_id,
        o.order_id,
        o.program_id,
        request.event_type,
        request.event_time,
        request.reason.as_str(),
        request
            .new_amount
            .as_deref()
            .unwrap_or("none (nothing remains)")
    );
    let reversals = Reversals::new(&settings.reversals, &settings.store.key_prefix);
    let op = reversals.adjust_op(&order, &request);
    let reply = match state.apply_decisions(std::slice::from_ref(&op)) {
        Ok(mut replies) => replies.pop().unwrap_or(DecisionReply::NoOriginal),
        Err(err) => {
            let _ = writeln!(out, "The store failed: {err}");
            return out;
        }
    };
    if let DecisionReply::Log { summary, requests } = &reply {
        let summary: Option<Summary> = serde_json::from_str(summary).ok();
        let log: Vec<Request> = requests
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        if let (Some(summary), Some((first, prior))) = (summary, log.split_last()) {
            let _ = writeln!(
                out,
                "2. The stored original: conversion {} {} at {}, partner {}, code {}, amount {} {}, discount {}, code table {}.",
                summary.event_id,
                summary.status.as_str(),
                summary.event_time,
                summary.partner_id.as_deref().unwrap_or("-"),
                summary.code_id.as_deref().unwrap_or("-"),
                summary.amount.as_deref().unwrap_or("none"),
                summary.currency.as_deref().unwrap_or(""),
                summary.discount.as_deref().unwrap_or("none"),
                summary.code_table_version
            );
            let _ = writeln!(out, "3. Adjustments before it: {}.", prior.len());
            for p in prior {
                let _ = writeln!(
                    out,
                    "   {:?}: new total {}",
                    p.adjustment_id,
                    p.new_amount.as_deref().unwrap_or("none")
                );
            }
            if first.fingerprint != request.fingerprint {
                let _ = writeln!(
                    out,
                    "   This adjustment id was seen before with other content: the first one is answered again."
                );
            }
            let late = after_lock(&summary, first.event_ms, &settings.reversals);
            let _ = writeln!(
                out,
                "4. Lock: {} s from the original's event time; the adjustment is {}.",
                settings.reversals.lock_secs,
                if late {
                    "after the lock (after_lock: true)"
                } else {
                    "within it"
                }
            );
            match evaluate(&summary, &log, &settings.reversals) {
                Effect::Recorded(a) => {
                    let _ = writeln!(
                        out,
                        "5. {}: amount {} -> {} (delta {}), discount delta {}{}.",
                        a.kind.as_str(),
                        a.amount_after
                            .checked_sub(a.amount_delta)
                            .map_or(String::new(), |d| d.to_string()),
                        a.amount_after,
                        a.amount_delta,
                        a.discount_delta,
                        if a.over_reversal {
                            ", clamped (OVER_REVERSAL)"
                        } else {
                            ""
                        }
                    );
                }
                effect => {
                    let _ = writeln!(out, "5. {effect:?}");
                }
            }
        }
    }
    match reversals.finish(&order, &request, &reply, table.version()) {
        Finished::Rejected { reason, message } => {
            let _ = writeln!(out, "Outcome: dead letter {reason}: {message}");
        }
        Finished::Written { record, alerts, .. } => {
            let mut line = Vec::new();
            match record {
                Some(record) if record.write_json(&mut line).is_ok() => {
                    let _ = writeln!(out, "Outcome: {}", String::from_utf8_lossy(&line));
                }
                _ => {
                    let _ = writeln!(out, "Outcome: no adjustment record.");
                }
            }
            for alert in alerts {
                let _ = writeln!(out, "Alert: {}", alert.kind.as_str());
            }
        }
    }
    out
}
