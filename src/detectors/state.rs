//! The state the detectors share across orders, as a handful of set operations.
//!
//! Detector logic never reads or writes state directly: for each order it lists the operations
//! to apply ([`OrderStep`]), a [`DetectorState`] applies a batch of steps atomically per order,
//! and the logic reads the counts that come back. Both implementations (in memory for the
//! offline mode and unit tests, Redis for the worker) apply exactly these semantics, so the
//! stream and the offline mode produce the same alerts from the same sequence of orders.
//!
//! Counting is by set membership (an order id, or a code, added to a sorted set), so applying a
//! step twice could not count twice even without the replay record; the replay record also
//! makes the outputs byte-identical, because it returns the counts the first application saw.

/// Score bounds of one count: `min <= score < max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: i64,
    pub max: i64,
}

impl Range {
    pub fn contains(self, score: i64) -> bool {
        self.min <= score && score < self.max
    }
}

/// One count of a step: range `range` of operation `op` (an earlier one of the same step, or
/// the operation being applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRef {
    pub op: usize,
    pub range: usize,
}

/// When an incident's alert is written: the detectors' thresholds as a condition on counts
/// before and after the order. The state evaluates it too, to read evidence only for the
/// orders that write an alert (reading it for every order of a burst would cost more than the
/// counting); `redis/detector_state.rs` mirrors [`Gate::fires`] in Lua.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Uses beyond `limit`: fires when the excess reaches a new power of two.
    Excess { count: CountRef, limit: u64 },
    /// `part` over `total` above `percent` % with at least `min_total`: fires when the
    /// condition starts to hold, and when `part` reaches a new power of two while it holds.
    Share {
        part: CountRef,
        total: CountRef,
        min_total: u64,
        percent: u64,
    },
    /// `uses` above `factor` x the mean of `buckets` baseline buckets (`base`) and at least
    /// `floor`: fires when that starts to hold, and at each new power of two of `uses`.
    Spike {
        uses: CountRef,
        base: CountRef,
        buckets: u64,
        factor: u64,
        floor: u64,
    },
    /// `distinct >= min_distinct` or `unknown >= min_unknown`: fires when that starts to hold,
    /// and at each new power of two of `distinct`.
    Either {
        distinct: CountRef,
        unknown: CountRef,
        min_distinct: u64,
        min_unknown: u64,
    },
}

impl Gate {
    /// Whether the order whose step produced `results` writes an alert.
    pub fn fires(&self, results: &[OpResult]) -> bool {
        let count = |r: CountRef| -> (u64, u64) {
            results.get(r.op).map_or((0, 0), |o| {
                let at = |v: &[u64]| v.get(r.range).copied().unwrap_or(0);
                (at(&o.before), at(&o.after))
            })
        };
        match *self {
            Gate::Excess { count: c, limit } => {
                let (b, a) = count(c);
                crossed_power_of_two(b.saturating_sub(limit), a.saturating_sub(limit))
            }
            Gate::Share {
                part,
                total,
                min_total,
                percent,
            } => {
                let ((pb, pa), (tb, ta)) = (count(part), count(total));
                let holds = |p: u64, t: u64| t >= min_total && p * 100 > percent * t;
                holds(pa, ta) && (!holds(pb, tb) || crossed_power_of_two(pb, pa))
            }
            Gate::Spike {
                uses,
                base,
                buckets,
                factor,
                floor,
            } => {
                let ((ub, ua), (_, base)) = (count(uses), count(base));
                let holds = |u: u64| u * buckets > factor * base && u >= floor;
                holds(ua) && (!holds(ub) || crossed_power_of_two(ub, ua))
            }
            Gate::Either {
                distinct,
                unknown,
                min_distinct,
                min_unknown,
            } => {
                let ((db, da), (ub, ua)) = (count(distinct), count(unknown));
                let holds = |d: u64, u: u64| d >= min_distinct || u >= min_unknown;
                holds(da, ua) && (!holds(db, ub) || crossed_power_of_two(db, da))
            }
        }
    }
}

/// Whether a count that went from `before` to `after` reached a new power of two: the points at
/// which an incident's alert is written again.
pub fn crossed_power_of_two(before: u64, after: u64) -> bool {
    after > before && (before == 0 || after.ilog2() > before.ilog2())
}

/// What to read when a gate fires: the first members of some score ranges of the set (which
/// need not be among the counted ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub ranges: Vec<Range>,
    pub gate: Gate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds `(score, member)` pairs to a sorted set (a member already there keeps its score:
    /// `ZADD NX`), then counts the members within each range, before and after. With
    /// `evidence` and its gate firing, returns up to [`EVIDENCE_LIMIT`] members of each
    /// evidence range in (score, member) order.
    Add {
        key: String,
        /// The same set under the customer HMAC key being rotated out: its members are merged
        /// into `key` first (a member in both keeps its lower score). Set union is idempotent,
        /// so a redone or replayed step counts the same.
        merge_from: Option<String>,
        ttl_secs: u64,
        members: Vec<(i64, String)>,
        /// Members scored below this are dropped first (keeps a window's set bounded).
        trim_below: Option<i64>,
        ranges: Vec<Range>,
        evidence: Option<Evidence>,
    },
    /// Adds 1 to each member's score (a tally); with `evidence` firing, returns the `top`
    /// members by descending score, then member, as `member, score` pairs.
    Tally {
        key: String,
        ttl_secs: u64,
        members: Vec<String>,
        top: usize,
        evidence: Option<Gate>,
    },
}

/// What one operation saw. For a tally `before`/`after` are empty. `evidence` has one list
/// per evidence range (one for a tally), or is empty when the gate did not fire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpResult {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
    pub evidence: Vec<Vec<String>>,
}

/// Evidence is capped so that a burst cannot produce an unbounded record.
pub const EVIDENCE_LIMIT: usize = crate::schema::alert::MAX_EVIDENCE_ORDERS;

/// Everything one order does to the state, applied atomically with its replay record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderStep {
    /// Shared hash-slot group (the program): steps of one group go to one atomic call.
    pub group: String,
    /// The replay record: (program, event type, order id), or with the fingerprint when
    /// duplicate detection is off.
    pub memo_key: String,
    /// The record's content hash: the same key with another fingerprint is a duplicate.
    pub fingerprint: String,
    pub memo_ttl_secs: u64,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Applied now, or applied before with the same content (a replay): these are the results
    /// of the first application.
    Applied(Vec<OpResult>),
    /// The replay record holds another content for the same order: nothing was applied.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("detector state unavailable: {0}")]
pub struct StateError(pub String);

/// Where the detectors keep their shared state.
pub trait DetectorState {
    /// Applies the steps in order, each atomically with its replay record, and returns one
    /// outcome per step. On error nothing can be assumed about which steps were applied; the
    /// caller redoes the whole batch, which the replay records make safe.
    fn apply(&mut self, steps: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError>;

    /// The decision store of `src/reversals` (summaries of decisions, adjustment logs), kept in
    /// the same place as the detectors' state and applied after the detector step of the batch.
    fn apply_decisions(
        &mut self,
        ops: &[crate::reversals::store::DecisionOp],
    ) -> Result<Vec<crate::reversals::store::DecisionReply>, StateError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        Err(StateError("this state keeps no decisions".into()))
    }
}
