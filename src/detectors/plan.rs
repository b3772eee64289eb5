//! What one order changes in the shared state, derived from the order and its decision alone
//! (never from the state), so a batch of plans can be applied in one round trip.
//!
//! Each detector plans its own operations ([`super::kinds`]); `plan` walks them in a fixed
//! order, and that order is part of the contract: the Redis script, the gates and the replay
//! records name results by operation index. Per matched code, first match first: usage limit,
//! customer limit (one operation per customer identifier), recent uses (`w:`, then `k:`); then
//! one enumeration operation per actor; then the unknown rate's two.
//!
//! Key layout, all below `<store.key_prefix>d:{<program_id>}:` — the braces are the Redis
//! Cluster hash tag, so every key of a program lives in one slot and one script call per
//! program covers an order's whole step:
//!
//! | key | set of | score | planned by |
//! |---|---|---|---|
//! | `o:<hash(event type, order id)>` | replay record: fingerprint and the step's results | | `kinds/duplicate_order.rs` |
//! | `u:<code_id>` | orders that used the code | event time (ms) | `kinds/usage_limit.rs` |
//! | `c:<code_id>:<customer ref>` | orders of one customer with the code | event time | `kinds/customer_limit.rs` |
//! | `w:<code_id>` | recent uses of the code (velocity, cold share) | event time | `kinds/recent_uses.rs` |
//! | `k:<code_id>` | recent cold uses of the code | event time | `kinds/recent_uses.rs` |
//! | `a:<actor ref>:<window>` | codes one actor used in a window, and its orders | codes: 0 known, 1 unknown; orders: event time (at least 2) | `kinds/enumeration.rs` |
//! | `n:<window>` | the program's orders with codes | 0 some code matched, 1 none | `kinds/unknown_rate.rs` |
//! | `nt:<window>` | unknown codes entered (a tally) | orders | `kinds/unknown_rate.rs` |

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::kinds::customer_limit::{self, CustomerCount};
use super::kinds::enumeration::{self, ActorCount};
use super::kinds::recent_uses::{self, RecentUses};
use super::kinds::unknown_rate::{self, UnknownCount};
use super::kinds::{duplicate_order, limit::LimitCount, usage_limit};
use super::state::{Op, OrderStep};
use super::{DetectorSettings, Detectors, Thresholds, secs_ms};
use crate::attribution::Decision;
use crate::codes::normalize::exact_key;
use crate::codes::{CodeTable, EntryId};
use crate::ids::alert_id;
use crate::schema::ValidOrder;

/// How to read the results of a step: which operation answers which question.
#[derive(Debug, Clone)]
pub struct Plan {
    pub step: OrderStep,
    pub thresholds: Thresholds,
    pub event_ms: i64,
    pub codes: Vec<CodePart>,
    pub actors: Vec<ActorCount>,
    pub unknown: Option<UnknownCount>,
}

/// One code the order used, and where its counts are.
#[derive(Debug, Clone)]
pub struct CodePart {
    pub entry: EntryId,
    /// Index into the order's `promo_codes` (the code as entered).
    pub position: usize,
    pub usage: Option<LimitCount>,
    /// One per customer identifier of the order.
    pub customers: Vec<CustomerCount>,
    pub recent: Option<RecentUses>,
}

/// What every detector's planning shares: where the program's keys are, the order's place in
/// them, and the operations listed so far (whose count is the next operation's index).
pub(super) struct Planner<'p> {
    pub(super) settings: &'p DetectorSettings,
    pub(super) thresholds: &'p Thresholds,
    /// `<prefix>{<program tag>}:`, the start of every key of the program.
    pub(super) base: String,
    pub(super) event_ms: i64,
    pub(super) order_id: &'p str,
    /// Whether this order drops the old uses from the rolling sets.
    pub(super) trims: bool,
    ops: Vec<Op>,
}

impl Planner<'_> {
    /// The index the next pushed operation gets: gates name their counts by it.
    pub(super) fn next_op(&self) -> usize {
        self.ops.len()
    }

    pub(super) fn push(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// A window's state is kept for its width plus the grace for late orders.
    pub(super) fn window_ttl(&self, width_secs: u64) -> u64 {
        width_secs.saturating_add(self.settings.grace_secs)
    }

    /// Where a rolling set may drop uses: below `oldest` less the grace for late orders, and
    /// only on the orders chosen to trim.
    pub(super) fn trim_below(&self, oldest: i64) -> Option<i64> {
        self.trims
            .then_some(oldest - secs_ms(self.settings.grace_secs))
    }

    /// This order as a member of a set scored by event time.
    pub(super) fn this_order(&self) -> (i64, String) {
        (self.event_ms, self.order_id.to_string())
    }
}

/// The codes an order entered, as the detectors that look at the whole order count them.
pub(super) struct EnteredCodes<'t> {
    /// The matched codes' code_ids, by entry id.
    pub(super) known: Vec<&'t str>,
    /// The unmatched ones, normalised and sorted.
    pub(super) unknown: BTreeSet<String>,
}

impl EnteredCodes<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.known.is_empty() && self.unknown.is_empty()
    }
}

/// The Redis Cluster hash tag of a program's keys. A program id with braces would end the tag
/// early (and "{}" tags nothing), so such ids are tagged by a hash instead: every key of a
/// program must share one slot.
pub fn program_tag(program_id: &str) -> Cow<'_, str> {
    if program_id.contains(['{', '}']) {
        Cow::Owned(alert_id(&["program", program_id]))
    } else {
        Cow::Borrowed(program_id)
    }
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
    let tag = program_tag(&o.program_id);
    let base = format!("{}{{{tag}}}:", detectors.prefix);
    let event_ms = order.event_time.timestamp_millis();
    let fingerprint = decision.conversion.event_id.to_string();
    let memo_key = duplicate_order::memo_key(&base, order, &fingerprint, &thresholds);
    // Old uses are dropped from the rolling sets by one order in eight (chosen by its id, so the
    // stream and the offline mode drop at the same points): each drop removes everything old at
    // once, and the sets stay bounded at a fraction of the cost of dropping on every order.
    let trims = xxhash_rust::xxh3::xxh3_64(o.order_id.as_bytes()).is_multiple_of(8);
    let mut planner = Planner {
        settings,
        thresholds: &thresholds,
        base,
        event_ms,
        order_id: &o.order_id,
        trims,
        ops: Vec::new(),
    };
    let p = &mut planner;
    let customers = customer_limit::customer_refs(detectors, order);
    let mut seen: BTreeSet<EntryId> = BTreeSet::new();
    let mut codes = Vec::new();
    for m in decision.matched.iter().filter(|m| seen.insert(m.entry)) {
        let entry = table.entry(m.entry);
        let code_id = table.code_id(m.entry);
        let usage = usage_limit::plan(p, entry, code_id);
        let customer_counts = customer_limit::plan(p, entry, code_id, &customers);
        let recent = recent_uses::plan(p, entry, code_id, &decision.conversion);
        codes.push(CodePart {
            entry: m.entry,
            position: m.position,
            usage,
            customers: customer_counts,
            recent,
        });
    }
    let entered = EnteredCodes {
        known: seen.iter().map(|&id| table.code_id(id)).collect(),
        unknown: decision
            .conversion
            .unknown_codes
            .iter()
            .map(|c| exact_key(c))
            .collect(),
    };
    let actors = enumeration::plan(p, detectors, order, &customers, &entered);
    let unknown = unknown_rate::plan(p, &entered);
    let ops = planner.ops;
    Plan {
        step: OrderStep {
            group: o.program_id.to_string(),
            memo_key,
            fingerprint,
            memo_ttl_secs: settings.replay_ttl_secs,
            ops,
        },
        thresholds,
        event_ms,
        codes,
        actors,
        unknown,
    }
}
