//! What one order changes in the shared state, derived from the order and its decision alone
//! (never from the state), so a batch of plans can be applied in one round trip.
//!
//! Key layout, all below `<store.key_prefix>d:{<program_id>}:` — the braces are the Redis
//! Cluster hash tag, so every key of a program lives in one slot and one script call per
//! program covers an order's whole step:
//!
//! | key | set of | score |
//! |---|---|---|
//! | `o:<hash(event type, order id)>` | replay record: fingerprint and the step's results | |
//! | `u:<code_id>` | orders that used the code | event time (ms) |
//! | `c:<code_id>:<customer ref>` | orders of one customer with the code | event time |
//! | `w:<code_id>` | recent uses of the code (velocity, cold share) | event time |
//! | `k:<code_id>` | recent cold uses of the code | event time |
//! | `a:<actor ref>:<window>` | codes one actor used in a window, and its orders | codes: 0 known, 1 unknown; orders: event time (at least 2) |
//! | `n:<window>` | the program's orders with codes | 0 some code matched, 1 none |
//! | `nt:<window>` | unknown codes entered (a tally) | orders |

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::Detectors;
use super::state::{CountRef, Evidence, Gate, Op, OrderStep, Range};
use super::{Thresholds, secs_ms, window_start};
use crate::attribution::Decision;
use crate::codes::normalize::exact_key;
use crate::codes::{CodeTable, EntryId};
use crate::ids::alert_id;
use crate::schema::ValidOrder;

const ALL: Range = Range {
    min: i64::MIN,
    max: i64::MAX,
};

/// How to read the results of a step: which operation answers which question.
#[derive(Debug, Clone)]
pub struct Plan {
    pub step: OrderStep,
    pub thresholds: Thresholds,
    pub event_ms: i64,
    pub codes: Vec<CodePart>,
    pub actors: Vec<ActorPart>,
    pub unknown: Option<UnknownPart>,
}

/// One code the order used, and where its counts are.
#[derive(Debug, Clone)]
pub struct CodePart {
    pub entry: EntryId,
    /// Index into the order's `promo_codes` (the code as entered).
    pub position: usize,
    /// `(op, usage limit, gate)`.
    pub usage: Option<(usize, u64, Gate)>,
    /// `(op, customer limit, gate, ref kind, ref)` per customer identifier of the order.
    pub customers: Vec<(usize, u64, Gate, &'static str, String)>,
    /// The `w:` operation and the indices of its ranges.
    pub recent: Option<RecentPart>,
    /// `(op, gate)` of the cold uses.
    pub cold: Option<(usize, Gate)>,
}

#[derive(Debug, Clone, Copy)]
pub struct RecentPart {
    pub op: usize,
    pub spike: Option<Gate>,
    /// (range index, bucket start ms)
    pub bucket: Option<(usize, i64)>,
    pub baseline: Option<usize>,
    /// (range index, window start ms)
    pub cold_window: Option<(usize, i64)>,
}

#[derive(Debug, Clone)]
pub struct ActorPart {
    pub kind: &'static str,
    pub reference: String,
    pub window_ms: i64,
    /// Ranges: 0 distinct codes, 1 unknown codes; evidence: the codes, then the orders.
    pub op: usize,
    pub gate: Gate,
}

#[derive(Debug, Clone, Copy)]
pub struct UnknownPart {
    pub window_ms: i64,
    /// Ranges: 0 orders with codes, 1 of which unknown.
    pub orders_op: usize,
    pub tally_op: usize,
    pub gate: Gate,
}

pub(super) fn plan(
    detectors: &Detectors,
    order: &ValidOrder<'_>,
    decision: &Decision<'_>,
    table: &CodeTable,
) -> Plan {
    let o = &order.order;
    let settings = detectors.settings();
    let thresholds = detectors.thresholds(table, &o.program_id);
    // A program id with braces would end the hash tag early (and "{}" tags nothing), so such
    // ids are tagged by a hash instead: every key of a program must share one slot.
    let tag: Cow<'_, str> = if o.program_id.contains(['{', '}']) {
        Cow::Owned(alert_id(&["program", &o.program_id]))
    } else {
        Cow::Borrowed(&o.program_id)
    };
    let base = format!("{}{{{tag}}}:", detectors.prefix);
    let event_ms = order.event_time.timestamp_millis();
    let fingerprint = decision.conversion.event_id.to_string();
    let memo_key = if thresholds.duplicate_order_id {
        format!(
            "{base}o:{}",
            alert_id(&["order", &o.event_type, &o.order_id])
        )
    } else {
        // Each distinct content is its own order: nothing is ever called a duplicate.
        format!(
            "{base}o:{}",
            alert_id(&["order", &o.event_type, &o.order_id, &fingerprint])
        )
    };
    let mut builder = Builder {
        ops: Vec::new(),
        member: o.order_id.to_string(),
        event_ms,
    };
    let customers = customer_refs(detectors, order);
    // Old uses are dropped from the rolling sets by one order in eight (chosen by its id, so the
    // stream and the offline mode drop at the same points): each drop removes everything old at
    // once, and the sets stay bounded at a fraction of the cost of dropping on every order.
    let trims = xxhash_rust::xxh3::xxh3_64(o.order_id.as_bytes()).is_multiple_of(8);
    let matched = &decision.matched;
    let unknown_codes = &decision.conversion.unknown_codes;
    let mut seen: BTreeSet<EntryId> = BTreeSet::new();
    let mut codes = Vec::new();
    let window_ttl = |width: u64| width.saturating_add(settings.grace_secs);
    for m in matched.iter().filter(|m| seen.insert(m.entry)) {
        let entry = table.entry(m.entry);
        let code_id = table.code_id(m.entry);
        let mut part = CodePart {
            entry: m.entry,
            position: m.position,
            usage: None,
            customers: Vec::new(),
            recent: None,
            cold: None,
        };
        if thresholds.usage_limit
            && let Some(limit) = entry.usage_limit
        {
            let limit = u64::from(limit);
            let (op, gate) = builder.add_over_limit(
                format!("{base}u:{code_id}"),
                settings.limit_ttl_secs,
                limit,
            );
            part.usage = Some((op, limit, gate));
        }
        if thresholds.customer_limit
            && let Some(limit) = entry.customer_limit
        {
            let limit = u64::from(limit);
            for (kind, reference) in &customers {
                let (op, gate) = builder.add_over_limit(
                    format!("{base}c:{code_id}:{reference}"),
                    settings.limit_ttl_secs,
                    limit,
                );
                part.customers
                    .push((op, limit, gate, kind, reference.clone()));
            }
        }
        let cold_applies = thresholds.cold_code_use
            && entry.owner_partner_id.is_some()
            && !thresholds.cold_exempt_codes.iter().any(|c| c == code_id);
        if thresholds.velocity || cold_applies {
            let mut ranges = Vec::new();
            let op = builder.ops.len();
            let mut recent = RecentPart {
                op,
                spike: None,
                bucket: None,
                baseline: None,
                cold_window: None,
            };
            let mut oldest = event_ms;
            if thresholds.velocity {
                let width = secs_ms(thresholds.velocity_bucket_secs);
                let start = window_start(event_ms, width);
                let baseline_start = start - width * thresholds.velocity_baseline_buckets as i64;
                recent.bucket = Some((ranges.len(), start));
                ranges.push(Range {
                    min: start,
                    max: start + width,
                });
                recent.baseline = Some(ranges.len());
                ranges.push(Range {
                    min: baseline_start,
                    max: start,
                });
                oldest = oldest.min(baseline_start);
                recent.spike = Some(Gate::Spike {
                    uses: CountRef { op, range: 0 },
                    base: CountRef { op, range: 1 },
                    buckets: thresholds.velocity_baseline_buckets,
                    factor: thresholds.velocity_factor,
                    floor: thresholds.velocity_floor,
                });
            }
            if cold_applies {
                let width = secs_ms(thresholds.cold_window_secs);
                let start = window_start(event_ms, width);
                recent.cold_window = Some((ranges.len(), start));
                ranges.push(Range {
                    min: start,
                    max: start + width,
                });
                oldest = oldest.min(start);
            }
            let horizon = (event_ms - oldest).max(0) as u64 / 1000 + 1;
            let trim = oldest - secs_ms(settings.grace_secs);
            let evidence = recent
                .spike
                .zip(ranges.first().copied())
                .map(|(gate, bucket)| Evidence {
                    ranges: vec![bucket],
                    gate,
                });
            builder.push(Op::Add {
                key: format!("{base}w:{code_id}"),
                ttl_secs: window_ttl(horizon),
                members: vec![(event_ms, o.order_id.to_string())],
                trim_below: trims.then_some(trim),
                ranges,
                evidence,
            });
            part.recent = Some(recent);
            if let Some((cold_range, start)) = recent.cold_window {
                let is_cold = entry.owner_partner_id.as_deref().is_some_and(|owner| {
                    !decision
                        .conversion
                        .involved_partners
                        .iter()
                        .any(|p| p == owner)
                });
                let width = secs_ms(thresholds.cold_window_secs);
                let members = if is_cold {
                    vec![(event_ms, o.order_id.to_string())]
                } else {
                    Vec::new()
                };
                let op = builder.ops.len();
                let gate = Gate::Share {
                    part: CountRef { op, range: 0 },
                    total: CountRef {
                        op: recent.op,
                        range: cold_range,
                    },
                    min_total: thresholds.cold_min_uses,
                    percent: thresholds.cold_share_percent,
                };
                builder.push(Op::Add {
                    key: format!("{base}k:{code_id}"),
                    ttl_secs: window_ttl(thresholds.cold_window_secs),
                    members,
                    trim_below: trims.then_some(start - secs_ms(settings.grace_secs)),
                    ranges: vec![Range {
                        min: start,
                        max: start + width,
                    }],
                    evidence: Some(Evidence {
                        ranges: vec![Range {
                            min: start,
                            max: start + width,
                        }],
                        gate,
                    }),
                });
                part.cold = Some((op, gate));
            }
        }
        codes.push(part);
    }

    // Tokens an actor used: known codes by code_id, unknown ones by their normalised text.
    let mut tokens: Vec<(i64, String)> = seen
        .iter()
        .map(|&id| (0, table.code_id(id).to_string()))
        .collect();
    let unknown_keys: BTreeSet<String> = unknown_codes.iter().map(|c| exact_key(c)).collect();
    tokens.extend(unknown_keys.iter().map(|k| (1, format!("?{k}"))));

    let mut actors = Vec::new();
    if thresholds.enumeration && !tokens.is_empty() {
        let width = secs_ms(thresholds.enumeration_window_secs);
        let start = window_start(event_ms, width);
        for (kind, reference) in actor_refs(detectors, order, &customers) {
            let op = builder.ops.len();
            let gate = Gate::Either {
                distinct: CountRef { op, range: 0 },
                unknown: CountRef { op, range: 1 },
                min_distinct: thresholds.enumeration_distinct_codes,
                min_unknown: thresholds.enumeration_unknown_codes,
            };
            // Codes (scores 0 and 1) and the actor's orders (scored by event time, kept clear of
            // the codes' scores) share one set: one operation per actor and order.
            let mut members = tokens.clone();
            members.push((event_ms.max(2), o.order_id.to_string()));
            builder.push(Op::Add {
                key: format!("{base}a:{reference}:{start}"),
                ttl_secs: window_ttl(thresholds.enumeration_window_secs),
                members,
                trim_below: None,
                ranges: vec![Range { min: 0, max: 2 }, Range { min: 1, max: 2 }],
                evidence: Some(Evidence {
                    ranges: vec![
                        Range { min: 0, max: 2 },
                        Range {
                            min: 2,
                            max: i64::MAX,
                        },
                    ],
                    gate,
                }),
            });
            actors.push(ActorPart {
                kind,
                reference,
                window_ms: start,
                op,
                gate,
            });
        }
    }

    let mut unknown = None;
    if thresholds.unknown_rate && !tokens.is_empty() {
        let width = secs_ms(thresholds.unknown_window_secs);
        let start = window_start(event_ms, width);
        let ttl = window_ttl(thresholds.unknown_window_secs);
        let all_unknown = matched.is_empty();
        let orders_op = builder.ops.len();
        let gate = Gate::Share {
            part: CountRef {
                op: orders_op,
                range: 1,
            },
            total: CountRef {
                op: orders_op,
                range: 0,
            },
            min_total: thresholds.unknown_min_orders,
            percent: thresholds.unknown_share_percent,
        };
        builder.push(Op::Add {
            key: format!("{base}n:{start}"),
            ttl_secs: ttl,
            members: vec![(i64::from(all_unknown), o.order_id.to_string())],
            trim_below: None,
            ranges: vec![Range { min: 0, max: 2 }, Range { min: 1, max: 2 }],
            evidence: Some(Evidence {
                ranges: vec![Range { min: 1, max: 2 }],
                gate,
            }),
        });
        let tally_op = builder.push(Op::Tally {
            key: format!("{base}nt:{start}"),
            ttl_secs: ttl,
            members: unknown_keys.iter().cloned().collect(),
            top: 5,
            evidence: Some(gate),
        });
        unknown = Some(UnknownPart {
            window_ms: start,
            orders_op,
            tally_op,
            gate,
        });
    }

    Plan {
        step: OrderStep {
            group: o.program_id.to_string(),
            memo_key,
            fingerprint,
            memo_ttl_secs: settings.replay_ttl_secs,
            ops: builder.ops,
        },
        thresholds,
        event_ms,
        codes,
        actors,
        unknown,
    }
}

struct Builder {
    ops: Vec<Op>,
    member: String,
    event_ms: i64,
}

impl Builder {
    fn push(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Adds this order to a lifetime set of uses, with the gate of an excess over `limit`
    /// (evidence: the first uses by event time).
    fn add_over_limit(&mut self, key: String, ttl_secs: u64, limit: u64) -> (usize, Gate) {
        let op = self.ops.len();
        let gate = Gate::Excess {
            count: CountRef { op, range: 0 },
            limit,
        };
        self.push(Op::Add {
            key,
            ttl_secs,
            members: vec![(self.event_ms, self.member.clone())],
            trim_below: None,
            ranges: vec![ALL],
            evidence: Some(Evidence {
                ranges: vec![ALL],
                gate,
            }),
        });
        (op, gate)
    }
}

/// The customer identifiers of an order, pseudonymised: the customer id and the email hash.
fn customer_refs(detectors: &Detectors, order: &ValidOrder<'_>) -> Vec<(&'static str, String)> {
    let mut refs = Vec::new();
    if let Some(customer) = &order.order.customer {
        if let Some(id) = customer.id.as_deref().filter(|v| !v.trim().is_empty()) {
            refs.push(("customer_id", detectors.pseudonym("customer_id", id)));
        }
        if let Some(email) = customer
            .email_sha256
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            let email = email.to_ascii_lowercase();
            refs.push(("email", detectors.pseudonym("email", &email)));
        }
    }
    refs
}

/// Everyone who could be enumerating codes: the customer (by id, else by email hash), the
/// device and the IP.
fn actor_refs(
    detectors: &Detectors,
    order: &ValidOrder<'_>,
    customers: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut refs: Vec<(&'static str, String)> = customers.iter().take(1).cloned().collect();
    if let Some(risk) = &order.order.risk {
        for (kind, value) in [
            ("device", risk.device_hash.as_deref()),
            ("ip", risk.ip_hash.as_deref()),
        ] {
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                refs.push((kind, detectors.pseudonym(kind, &value.to_ascii_lowercase())));
            }
        }
    }
    refs
}
