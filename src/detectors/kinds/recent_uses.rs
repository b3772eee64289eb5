//! CODE_VELOCITY_SPIKE and COLD_CODE_USE_RATE, which count in the same set of a code's recent
//! uses (`w:<code_id>`, one operation whose ranges serve both); the cold share also keeps the
//! cold uses apart (`k:<code_id>`).

use serde_json::json;

use crate::codes::CodeEntry;
use crate::detectors::plan::{CodePart, Planner};
use crate::detectors::report::{CodeUse, Finding, Reading, count, evidence, instant};
use crate::detectors::state::{CountRef, Evidence, Gate, Op, Range};
use crate::detectors::{secs_ms, window_start};
use crate::schema::{AlertKind, Conversion, Severity};

/// The `w:` operation, and what each detector reading it counts there.
#[derive(Debug, Clone, Copy)]
pub struct RecentUses {
    pub op: usize,
    pub velocity: Option<VelocityCount>,
    pub cold: Option<ColdCount>,
}

/// A range of an operation that counts one window, and where that window starts.
#[derive(Debug, Clone, Copy)]
pub struct RangeRef {
    pub range: usize,
    pub start_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct VelocityCount {
    /// The bucket the order falls in.
    pub bucket: RangeRef,
    /// The range of the buckets before it.
    pub baseline: usize,
    pub gate: Gate,
}

#[derive(Debug, Clone, Copy)]
pub struct ColdCount {
    /// All uses in the order's window, a range of the `w:` operation.
    pub window: RangeRef,
    /// The `k:` operation: the cold uses in that window.
    pub op: usize,
    pub gate: Gate,
}

pub(in crate::detectors) fn plan(
    p: &mut Planner<'_>,
    entry: &CodeEntry,
    code_id: &str,
    conversion: &Conversion<'_>,
) -> Option<RecentUses> {
    let t = p.thresholds;
    let cold_applies = t.cold_code_use
        && entry.owner_partner_id.is_some()
        && !t.cold_exempt_codes.iter().any(|c| c == code_id);
    if !t.velocity && !cold_applies {
        return None;
    }
    let op = p.next_op();
    let mut ranges = Vec::new();
    let mut oldest = p.event_ms;
    let velocity = if t.velocity {
        let bucket = push_window(&mut ranges, p.event_ms, t.velocity_bucket_secs);
        let start = bucket.start_ms;
        let baseline_start =
            start - secs_ms(t.velocity_bucket_secs) * t.velocity_baseline_buckets as i64;
        let baseline = ranges.len();
        ranges.push(Range {
            min: baseline_start,
            max: start,
        });
        oldest = oldest.min(baseline_start);
        let gate = Gate::Spike {
            uses: CountRef {
                op,
                range: bucket.range,
            },
            base: CountRef {
                op,
                range: baseline,
            },
            buckets: t.velocity_baseline_buckets,
            factor: t.velocity_factor,
            floor: t.velocity_floor,
        };
        Some(VelocityCount {
            bucket,
            baseline,
            gate,
        })
    } else {
        None
    };
    let cold_window = if cold_applies {
        let window = push_window(&mut ranges, p.event_ms, t.cold_window_secs);
        oldest = oldest.min(window.start_ms);
        Some(window)
    } else {
        None
    };
    // The set lives as long as its oldest range reaches back from this order.
    let horizon = (p.event_ms - oldest).max(0) as u64 / 1000 + 1;
    // Only the spike's orders are read here: the cold share's are the cold ones, in `k:`.
    let evidence = velocity.map(|v| Evidence {
        ranges: ranges.get(v.bucket.range).copied().into_iter().collect(),
        gate: v.gate,
    });
    p.push(Op::Add {
        key: format!("{}w:{code_id}", p.base),
        merge_from: None,
        ttl_secs: p.window_ttl(horizon),
        members: vec![p.this_order()],
        trim_below: p.trim_below(oldest),
        ranges,
        evidence,
    });
    let cold = cold_window.map(|window| plan_cold(p, entry, code_id, conversion, op, window));
    Some(RecentUses { op, velocity, cold })
}

/// Adds the range of the window of `width_secs` that holds the order.
fn push_window(ranges: &mut Vec<Range>, event_ms: i64, width_secs: u64) -> RangeRef {
    let width = secs_ms(width_secs);
    let start = window_start(event_ms, width);
    ranges.push(Range {
        min: start,
        max: start + width,
    });
    RangeRef {
        range: ranges.len() - 1,
        start_ms: start,
    }
}

/// Every use goes to `w:`, a cold one (no eligible click from the code's owner) to `k:` too.
fn plan_cold(
    p: &mut Planner<'_>,
    entry: &CodeEntry,
    code_id: &str,
    conversion: &Conversion<'_>,
    recent_op: usize,
    window: RangeRef,
) -> ColdCount {
    let t = p.thresholds;
    let is_cold = entry
        .owner_partner_id
        .as_deref()
        .is_some_and(|owner| !conversion.involved_partners.iter().any(|p| p == owner));
    let members = if is_cold {
        vec![p.this_order()]
    } else {
        Vec::new()
    };
    let start = window.start_ms;
    let in_window = Range {
        min: start,
        max: start + secs_ms(t.cold_window_secs),
    };
    let op = p.next_op();
    let gate = Gate::Share {
        part: CountRef { op, range: 0 },
        total: CountRef {
            op: recent_op,
            range: window.range,
        },
        min_total: t.cold_min_uses,
        percent: t.cold_share_percent,
    };
    p.push(Op::Add {
        key: format!("{}k:{code_id}", p.base),
        merge_from: None,
        ttl_secs: p.window_ttl(t.cold_window_secs),
        members,
        trim_below: p.trim_below(start),
        ranges: vec![in_window],
        evidence: Some(Evidence {
            ranges: vec![in_window],
            gate,
        }),
    });
    ColdCount { window, op, gate }
}

pub(in crate::detectors) fn report<'a>(
    part: &CodePart,
    code: CodeUse<'a>,
    reading: &Reading<'_>,
    findings: &mut Vec<Finding<'a>>,
) {
    let Some(recent) = part.recent else { return };
    let t = reading.thresholds;
    let r = reading.result(recent.op);
    if let Some(velocity) = recent.velocity
        && reading.fires(&velocity.gate)
    {
        let start = velocity.bucket.start_ms;
        let (uses, base) = (
            count(&r.after, velocity.bucket.range),
            count(&r.after, velocity.baseline),
        );
        let b = t.velocity_baseline_buckets;
        let twice_over = uses * b > 2 * t.velocity_factor * base && uses >= 2 * t.velocity_floor;
        let kind = AlertKind::CodeVelocitySpike;
        findings.push(Finding {
            kind,
            severity: if twice_over {
                Severity::High
            } else {
                kind.severity()
            },
            subject: vec![code.code_id.to_string(), start.to_string()],
            evidence: evidence(r, 0),
            code: Some(code),
            other_partner: None,
            count: uses,
            detail: json!({
                "window_start": instant(start),
                "window_end": instant(start + secs_ms(t.velocity_bucket_secs)),
                "uses": uses,
                "baseline_uses": base,
                "baseline_windows": b,
                "factor": t.velocity_factor,
                "floor": t.velocity_floor,
            }),
        });
    }
    if let Some(cold) = recent.cold
        && reading.fires(&cold.gate)
    {
        let start = cold.window.start_ms;
        let cold_result = reading.result(cold.op);
        let (uses, cold_uses) = (
            count(&r.after, cold.window.range),
            count(&cold_result.after, 0),
        );
        findings.push(Finding {
            kind: AlertKind::ColdCodeUseRate,
            severity: AlertKind::ColdCodeUseRate.severity(),
            subject: vec![code.code_id.to_string(), start.to_string()],
            evidence: evidence(cold_result, 0),
            code: Some(code),
            other_partner: None,
            count: cold_uses,
            detail: json!({
                "window_start": instant(start),
                "window_end": instant(start + secs_ms(t.cold_window_secs)),
                "uses": uses,
                "cold_uses": cold_uses,
                "cold_share_percent": cold_uses * 100 / uses.max(1),
                "threshold_percent": t.cold_share_percent,
                "min_uses": t.cold_min_uses,
            }),
        });
    }
}
