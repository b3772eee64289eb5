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

/// Evidence is read only when a count shows an alert is possible: reading it for every order
/// would cost more than the counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvidenceWhen {
    /// Index, within the same step, of the operation whose count decides (this one or earlier).
    pub op: usize,
    pub range: usize,
    /// Read the evidence when that count, after the operation, is at least this.
    pub min: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds `(score, member)` pairs to a sorted set (an existing member takes the new score),
    /// then counts the members within each range, before and after. With `evidence`, returns
    /// up to `limit` members of `ranges[range]` in (score, member) order.
    Add {
        key: String,
        ttl_secs: u64,
        members: Vec<(i64, String)>,
        /// Members scored below this are dropped first (keeps a window's set bounded).
        trim_below: Option<i64>,
        ranges: Vec<Range>,
        evidence: Option<(usize, EvidenceWhen)>,
    },
    /// Adds 1 to each member's score (a tally); with `evidence`, returns the `top` members by
    /// descending score, then member, as `member, score` pairs.
    Tally {
        key: String,
        ttl_secs: u64,
        members: Vec<String>,
        top: usize,
        evidence: Option<EvidenceWhen>,
    },
}

/// What one operation saw. For a tally `before`/`after` are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpResult {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
    pub evidence: Vec<String>,
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
}
