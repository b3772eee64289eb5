//! The decision store as operations: what a batch writes and reads, applied by the worker's
//! state (Redis, `src/redis/decision_store.rs`) or in memory (offline mode, tests) with the
//! same semantics, so the stream and the offline mode give the same adjustments.

use std::collections::HashMap;

use crate::detectors::StateError;

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
}

impl DecisionOp {
    pub fn group(&self) -> &str {
        match self {
            DecisionOp::Record { group, .. } | DecisionOp::Adjust { group, .. } => group,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReply {
    Recorded,
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
}

/// The store in process memory; retention is not modelled (an offline run is finite).
#[derive(Debug, Default)]
pub struct MemoryDecisions {
    orders: HashMap<String, OrderLog>,
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
                    self.orders.entry(key.clone()).or_insert_with(|| OrderLog {
                        summary: summary.clone(),
                        ..OrderLog::default()
                    });
                    DecisionReply::Recorded
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
                DecisionReply::Recorded,
                DecisionReply::Recorded,
                log(&["ra"]),
                log(&["ra", "rb"]),
                log(&["ra"]),
            ]
        );
        assert_eq!(store.len(), 1);
    }
}
