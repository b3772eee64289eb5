//! The decision store as operations: what a batch writes and reads, applied by the worker's
//! state (Redis, `src/redis/decision_store.rs`) or in memory (offline mode, tests) with the
//! same semantics, so the stream and the offline mode give the same adjustments.

use std::collections::HashMap;

use crate::detectors::StateError;
use crate::detectors::kinds::reversal_rate::{RateCounter, RateCounts};
use crate::detectors::state::EVIDENCE_LIMIT;

/// One write of a batch, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionOp {
    /// Keeps the decision's summary unless the order has one already (the first decision of an
    /// order id wins, as for duplicates); the summary lives `ttl_secs` from then.
    Record {
        /// The program: ops of one group share a Redis Cluster slot.
        group: String,
        key: String,
        summary: String,
        ttl_secs: u64,
    },
    /// Appends the request under its adjustment id unless that id is in the order's log, and
    /// answers with the summary and the log up to that id's first request. Nothing is written
    /// for an order without a summary.
    Adjust {
        group: String,
        key: String,
        adjustment_id: String,
        request: String,
    },
    /// HIGH_REVERSAL_RATE's credit of a sale: adds one order and `counter.units` to each of
    /// the counter's fields, once per order, and only when the order's stored summary is
    /// `summary` (the decision that was kept: a duplicate's credit is not counted).
    Credit {
        group: String,
        key: String,
        summary: String,
        counter: RateCounter,
    },
    /// HIGH_REVERSAL_RATE's count of an adjustment that took `counter.units` back from the
    /// sale of order `key`: once per adjustment id (a repeat is answered with the first
    /// count's [`RateCounts`]); the order counts as reversed (and as evidence) on its first.
    /// Nothing is counted (no counts come back) unless the sale's credit was: a sale decided
    /// before the detector was on would otherwise count its refunds against nothing.
    Reverse {
        group: String,
        key: String,
        adjustment_id: String,
        order_id: String,
        counter: RateCounter,
    },
}

impl DecisionOp {
    /// The order's key (every other key of the op is in the same program's slot).
    pub fn key(&self) -> &str {
        match self {
            DecisionOp::Record { key, .. }
            | DecisionOp::Adjust { key, .. }
            | DecisionOp::Credit { key, .. }
            | DecisionOp::Reverse { key, .. } => key,
        }
    }

    pub fn group(&self) -> &str {
        match self {
            DecisionOp::Record { group, .. }
            | DecisionOp::Adjust { group, .. }
            | DecisionOp::Credit { group, .. }
            | DecisionOp::Reverse { group, .. } => group,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReply {
    /// `new`: this op wrote the summary (not a replay, not a later decision of the order).
    Recorded { new: bool },
    /// A credit, counted or not.
    Credited,
    /// A reversal's counts, one per subject of its counter (none when the order's summary is
    /// gone).
    Rates(Vec<RateCounts>),
    /// No summary for the order: never decided, or past its retention.
    NoOriginal,
    /// The summary, and the requests up to and including the adjustment's first one.
    Log {
        summary: String,
        requests: Vec<String>,
    },
}

/// Where decision summaries live.
pub trait DecisionStore {
    /// Applies the ops in order, each atomically, and answers one reply per op. On error the
    /// caller redoes the batch; every op is idempotent, so that is safe.
    fn apply_decisions(&mut self, ops: &[DecisionOp]) -> Result<Vec<DecisionReply>, StateError>;
}

#[derive(Debug, Default)]
struct OrderLog {
    summary: String,
    requests: Vec<String>,
    index: HashMap<String, usize>,
    /// Whether the order's credit was counted, and whether it counted as reversed yet.
    credited: bool,
    reversed: bool,
    /// Reversal counts by adjustment id, as first seen.
    rates: HashMap<String, Vec<RateCounts>>,
}

/// One window's counts: per field `n`, `a`, `r`, `ra`, `pn`, `pa` (as the Redis hash's
/// `<field>|n` ...) and the evidence.
#[derive(Debug, Default)]
struct Window {
    counts: HashMap<(String, &'static str), i64>,
    evidence: HashMap<String, Vec<String>>,
}

impl Window {
    fn get(&self, field: &str, what: &'static str) -> u64 {
        let n = self.counts.get(&(field.to_string(), what)).copied();
        u64::try_from(n.unwrap_or(0)).unwrap_or(0)
    }

    fn set(&mut self, field: &str, what: &'static str, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.counts.insert((field.to_string(), what), value);
    }

    /// `HINCRBY`, where an overflow leaves the count as it was (the script ignores the error).
    fn add(&mut self, field: &str, what: &'static str, by: u64) {
        let count = self.counts.entry((field.to_string(), what)).or_insert(0);
        if let Some(sum) = i64::try_from(by).ok().and_then(|by| count.checked_add(by)) {
            *count = sum;
        }
    }
}

/// The store in process memory; retention is not modelled (an offline run is finite).
#[derive(Debug, Default)]
pub struct MemoryDecisions {
    orders: HashMap<String, OrderLog>,
    windows: HashMap<String, Window>,
}

impl MemoryDecisions {
    /// Decisions kept.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

impl DecisionStore for MemoryDecisions {
    fn apply_decisions(&mut self, ops: &[DecisionOp]) -> Result<Vec<DecisionReply>, StateError> {
        Ok(ops
            .iter()
            .map(|op| match op {
                DecisionOp::Record { key, summary, .. } => {
                    let new = !self.orders.contains_key(key);
                    self.orders.entry(key.clone()).or_insert_with(|| OrderLog {
                        summary: summary.clone(),
                        ..OrderLog::default()
                    });
                    DecisionReply::Recorded { new }
                }
                DecisionOp::Credit {
                    key,
                    summary,
                    counter,
                    ..
                } => {
                    if let Some(log) = self.orders.get_mut(key)
                        && log.summary == *summary
                        && !log.credited
                    {
                        log.credited = true;
                        let window = self.windows.entry(counter.key.clone()).or_default();
                        for field in &counter.fields {
                            window.add(field, "n", 1);
                            window.add(field, "a", counter.units);
                        }
                    }
                    DecisionReply::Credited
                }
                DecisionOp::Reverse {
                    key,
                    adjustment_id,
                    order_id,
                    counter,
                    ..
                } => {
                    let Some(log) = self.orders.get_mut(key).filter(|log| log.credited) else {
                        return DecisionReply::Rates(Vec::new());
                    };
                    if let Some(first) = log.rates.get(adjustment_id) {
                        return DecisionReply::Rates(first.clone());
                    }
                    let first_reversal = !log.reversed;
                    log.reversed = true;
                    let window = self.windows.entry(counter.key.clone()).or_default();
                    let counts: Vec<RateCounts> = counter
                        .fields
                        .iter()
                        .map(|field| {
                            reverse(window, field, counter.units, order_id, first_reversal)
                        })
                        .collect();
                    log.rates.insert(adjustment_id.clone(), counts.clone());
                    DecisionReply::Rates(counts)
                }
                DecisionOp::Adjust {
                    key,
                    adjustment_id,
                    request,
                    ..
                } => match self.orders.get_mut(key) {
                    None => DecisionReply::NoOriginal,
                    Some(log) => {
                        let end = match log.index.get(adjustment_id) {
                            Some(&at) => at + 1,
                            None => {
                                log.requests.push(request.clone());
                                log.index
                                    .insert(adjustment_id.clone(), log.requests.len() - 1);
                                log.requests.len()
                            }
                        };
                        DecisionReply::Log {
                            summary: log.summary.clone(),
                            requests: log.requests[..end].to_vec(),
                        }
                    }
                },
            })
            .collect())
    }
}

/// One subject's reversal count, as the script's `R` does it.
fn reverse(
    window: &mut Window,
    field: &str,
    units: u64,
    order_id: &str,
    first: bool,
) -> RateCounts {
    let (orders_before, before) = (window.get(field, "r"), window.get(field, "ra"));
    let (seen_orders, seen_credited) = (window.get(field, "pn"), window.get(field, "pa"));
    if first {
        window.add(field, "r", 1);
        let evidence = window.evidence.entry(field.to_string()).or_default();
        if (orders_before as usize) < EVIDENCE_LIMIT {
            evidence.push(order_id.to_string());
        }
    }
    window.add(field, "ra", units);
    let (orders, credited) = (window.get(field, "n"), window.get(field, "a"));
    window.set(field, "pn", orders);
    window.set(field, "pa", credited);
    RateCounts {
        orders,
        credited,
        orders_before: seen_orders,
        credited_before: seen_credited,
        reversed_orders_before: orders_before,
        reversed_before: before,
        reversed_orders: window.get(field, "r"),
        reversed: window.get(field, "ra"),
        evidence: window.evidence.get(field).cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, summary: &str) -> DecisionOp {
        DecisionOp::Record {
            group: "p".into(),
            key: key.into(),
            summary: summary.into(),
            ttl_secs: 60,
        }
    }

    fn adjust(key: &str, id: &str, request: &str) -> DecisionOp {
        DecisionOp::Adjust {
            group: "p".into(),
            key: key.into(),
            adjustment_id: id.into(),
            request: request.into(),
        }
    }

    #[test]
    fn first_summary_wins_and_a_repeated_id_gets_its_first_log() {
        let mut store = MemoryDecisions::default();
        let replies = store
            .apply_decisions(&[
                adjust("o", "a", "early"),
                record("o", "s1"),
                record("o", "s2"),
                adjust("o", "a", "ra"),
                adjust("o", "b", "rb"),
                adjust("o", "a", "changed"),
            ])
            .expect("memory");
        let log = |requests: &[&str]| DecisionReply::Log {
            summary: "s1".into(),
            requests: requests.iter().map(|r| r.to_string()).collect(),
        };
        assert_eq!(
            replies,
            [
                DecisionReply::NoOriginal,
                DecisionReply::Recorded { new: true },
                DecisionReply::Recorded { new: false },
                log(&["ra"]),
                log(&["ra", "rb"]),
                log(&["ra"]),
            ]
        );
        assert_eq!(store.len(), 1);
    }

    fn counter(units: u64) -> RateCounter {
        RateCounter {
            key: "w".into(),
            ttl_secs: 60,
            fields: vec!["f".into()],
            units,
        }
    }

    fn credit(key: &str, summary: &str, units: u64) -> DecisionOp {
        DecisionOp::Credit {
            group: "p".into(),
            key: key.into(),
            summary: summary.into(),
            counter: counter(units),
        }
    }

    fn reverse(key: &str, id: &str, units: u64) -> DecisionOp {
        DecisionOp::Reverse {
            group: "p".into(),
            key: key.into(),
            adjustment_id: id.into(),
            order_id: key.into(),
            counter: counter(units),
        }
    }

    #[test]
    fn credits_count_once_for_the_kept_summary_and_reversals_once_per_id() {
        let mut store = MemoryDecisions::default();
        let replies = store
            .apply_decisions(&[
                credit("o", "s1", 100),
                record("o", "s1"),
                record("o", "s2"),
                credit("o", "s2", 500),
                credit("o", "s1", 100),
                credit("o", "s1", 100),
                reverse("o", "a", 40),
                reverse("o", "b", 60),
                reverse("o", "a", 999),
                reverse("gone", "a", 1),
                record("uncredited", "s"),
                reverse("uncredited", "a", 1),
            ])
            .expect("memory");
        let rates = |i: usize| match &replies[i] {
            DecisionReply::Rates(counts) => counts.clone(),
            other => panic!("{other:?}"),
        };
        let first = rates(6);
        assert_eq!(
            (first[0].orders, first[0].credited),
            (1, 100),
            "no credit before the summary, none for another summary, one for the kept one"
        );
        assert_eq!((first[0].reversed_orders, first[0].reversed), (1, 40));
        assert_eq!(first[0].evidence, ["o"]);
        let second = rates(7);
        assert_eq!(
            (second[0].reversed_orders, second[0].reversed),
            (1, 100),
            "the same order again: more amount, not another order"
        );
        assert_eq!(
            (second[0].orders_before, second[0].credited_before),
            (1, 100)
        );
        assert_eq!(rates(8), first, "a repeated id gets its first counts");
        assert!(rates(9).is_empty(), "no summary, nothing counted");
        assert!(rates(11).is_empty(), "no credit, nothing counted");
    }
}
