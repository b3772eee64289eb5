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
//! | `a:<actor ref>:<window>` | codes one actor used in a window | 0 known, 1 unknown |
//! | `ao:<actor ref>:<window>` | that actor's orders in the window | event time |
//! | `n:<window>` | the program's orders with codes | 0 some code matched, 1 none |
//! | `nt:<window>` | unknown codes entered (a tally) | orders |

use std::collections::BTreeSet;

use super::Detectors;
use super::state::{EvidenceWhen, Op, OrderStep, Range};
use super::{Thresholds, secs_ms, window_start};
use crate::attribution::{Decision, match_codes};
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
    /// `(op, usage limit)`.
    pub usage: Option<(usize, u64)>,
    /// `(op, customer limit, ref kind, ref)` per customer identifier of the order.
    pub customers: Vec<(usize, u64, &'static str, String)>,
    /// The `w:` operation and the indices of its ranges.
    pub recent: Option<RecentPart>,
    /// `(op, this use is cold)`.
    pub cold: Option<(usize, bool)>,
}

#[derive(Debug, Clone, Copy)]
pub struct RecentPart {
    pub op: usize,
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
    pub codes_op: usize,
    pub orders_op: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct UnknownPart {
    pub window_ms: i64,
    pub orders_op: usize,
    pub tally_op: usize,
}

/// The smallest count at which `count * 100 > percent * total` can hold with `total >= min`.
fn least_share_count(min_total: u64, percent: u64) -> u64 {
    (min_total * percent / 100 + 1).max(1)
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
    let base = format!("{}{{{}}}:", detectors.prefix, o.program_id);
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
    let (matched, unknown_codes) = match_codes(order, table);
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
            let op = builder.add_order(
                format!("{base}u:{code_id}"),
                settings.limit_ttl_secs,
                None,
                vec![ALL],
                Some(limit + 1),
            );
            part.usage = Some((op, limit));
        }
        if thresholds.customer_limit
            && let Some(limit) = entry.customer_limit
        {
            let limit = u64::from(limit);
            for (kind, reference) in &customers {
                let op = builder.add_order(
                    format!("{base}c:{code_id}:{reference}"),
                    settings.limit_ttl_secs,
                    None,
                    vec![ALL],
                    Some(limit + 1),
                );
                part.customers.push((op, limit, kind, reference.clone()));
            }
        }
        let cold_applies = thresholds.cold_code_use
            && entry.owner_partner_id.is_some()
            && !thresholds.cold_exempt_codes.iter().any(|c| c == code_id);
        if thresholds.velocity || cold_applies {
            let mut ranges = Vec::new();
            let mut recent = RecentPart {
                op: 0,
                bucket: None,
                baseline: None,
                cold_window: None,
            };
            let mut oldest = event_ms;
            let mut evidence_floor = None;
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
                evidence_floor = Some(thresholds.velocity_floor);
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
            recent.op = builder.add_order(
                format!("{base}w:{code_id}"),
                window_ttl(horizon),
                Some(trim),
                ranges,
                evidence_floor,
            );
            part.recent = Some(recent);
            if let Some((_, start)) = recent.cold_window {
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
                let op = builder.push(Op::Add {
                    key: format!("{base}k:{code_id}"),
                    ttl_secs: window_ttl(thresholds.cold_window_secs),
                    members,
                    trim_below: Some(start - secs_ms(settings.grace_secs)),
                    ranges: vec![Range {
                        min: start,
                        max: start + width,
                    }],
                    evidence: None,
                });
                set_self_evidence(
                    &mut builder.ops[op],
                    op,
                    least_share_count(thresholds.cold_min_uses, thresholds.cold_share_percent),
                );
                part.cold = Some((op, is_cold));
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
        let least = thresholds
            .enumeration_distinct_codes
            .min(thresholds.enumeration_unknown_codes);
        for (kind, reference) in actor_refs(detectors, order, &customers) {
            let ttl = window_ttl(thresholds.enumeration_window_secs);
            let codes_op = builder.push(Op::Add {
                key: format!("{base}a:{reference}:{start}"),
                ttl_secs: ttl,
                members: tokens.clone(),
                trim_below: None,
                ranges: vec![Range { min: 0, max: 2 }, Range { min: 1, max: 2 }],
                evidence: None,
            });
            set_self_evidence(&mut builder.ops[codes_op], codes_op, least);
            let orders_op = builder.push(Op::Add {
                key: format!("{base}ao:{reference}:{start}"),
                ttl_secs: ttl,
                members: vec![(event_ms, o.order_id.to_string())],
                trim_below: None,
                ranges: vec![ALL],
                evidence: Some((
                    0,
                    EvidenceWhen {
                        op: codes_op,
                        range: 0,
                        min: least,
                    },
                )),
            });
            actors.push(ActorPart {
                kind,
                reference,
                window_ms: start,
                codes_op,
                orders_op,
            });
        }
    }

    let mut unknown = None;
    if thresholds.unknown_rate && !tokens.is_empty() {
        let width = secs_ms(thresholds.unknown_window_secs);
        let start = window_start(event_ms, width);
        let ttl = window_ttl(thresholds.unknown_window_secs);
        let all_unknown = matched.is_empty();
        let least = least_share_count(
            thresholds.unknown_min_orders,
            thresholds.unknown_share_percent,
        );
        let orders_op = builder.ops.len();
        builder.push(Op::Add {
            key: format!("{base}n:{start}"),
            ttl_secs: ttl,
            members: vec![(i64::from(all_unknown), o.order_id.to_string())],
            trim_below: None,
            ranges: vec![Range { min: 0, max: 2 }, Range { min: 1, max: 2 }],
            evidence: Some((
                1,
                EvidenceWhen {
                    op: orders_op,
                    range: 1,
                    min: least,
                },
            )),
        });
        let tally_op = builder.push(Op::Tally {
            key: format!("{base}nt:{start}"),
            ttl_secs: ttl,
            members: unknown_keys.iter().cloned().collect(),
            top: 5,
            evidence: Some(EvidenceWhen {
                op: orders_op,
                range: 1,
                min: least,
            }),
        });
        unknown = Some(UnknownPart {
            window_ms: start,
            orders_op,
            tally_op,
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

    /// Adds this order to a set scored by event time; evidence (the first members of the
    /// first range) is read once that range holds `evidence_from` members.
    fn add_order(
        &mut self,
        key: String,
        ttl_secs: u64,
        trim_below: Option<i64>,
        ranges: Vec<Range>,
        evidence_from: Option<u64>,
    ) -> usize {
        let op = self.push(Op::Add {
            key,
            ttl_secs,
            members: vec![(self.event_ms, self.member.clone())],
            trim_below,
            ranges,
            evidence: None,
        });
        if let Some(min) = evidence_from {
            set_self_evidence(&mut self.ops[op], op, min);
        }
        op
    }
}

fn set_self_evidence(op: &mut Op, index: usize, min: u64) {
    if let Op::Add { evidence, .. } = op {
        *evidence = Some((
            0,
            EvidenceWhen {
                op: index,
                range: 0,
                min,
            },
        ));
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

/// Everyone who could be enumerating codes: the customer identifiers, the device and the IP.
fn actor_refs(
    detectors: &Detectors,
    order: &ValidOrder<'_>,
    customers: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut refs = customers.to_vec();
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
