//! The small fixed sets of label values the worker's metrics are broken down by.

/// How a Kafka transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxOutcome {
    Committed,
    Aborted,
}

impl TxOutcome {
    pub const ALL: [TxOutcome; 2] = [TxOutcome::Committed, TxOutcome::Aborted];

    pub fn as_str(self) -> &'static str {
        match self {
            TxOutcome::Committed => "committed",
            TxOutcome::Aborted => "aborted",
        }
    }
}

/// What became of a new code table version announced by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// Read, indexed and in force.
    Loaded,
    /// Unreadable or inconsistent; the previous table stays in force.
    Refused,
}

impl ReloadOutcome {
    pub const ALL: [ReloadOutcome; 2] = [ReloadOutcome::Loaded, ReloadOutcome::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Loaded => "loaded",
            ReloadOutcome::Refused => "refused",
        }
    }
}

/// How a batch's detector step in Redis ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepResult {
    Applied,
    /// Redis down or slow: the batch is aborted and redone.
    Failed,
}

impl StepResult {
    pub fn of<T, E>(result: &Result<T, E>) -> StepResult {
        match result {
            Ok(_) => StepResult::Applied,
            Err(_) => StepResult::Failed,
        }
    }
}

/// Where a batch's commit spends its time (`promo_commit_phase_seconds{phase}`), so an operator
/// can tell a slow broker acknowledgement from a slow transaction coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitPhase {
    /// Deciding the records held for the detectors, with the detector step in Redis.
    Held,
    /// Waiting for the broker to acknowledge the batch's last outputs. Exactly-once, this comes
    /// after the offsets were added, and only what is left of the wait by then is counted here.
    Deliveries,
    /// Adding the input offsets to the transaction (exactly-once) or storing and committing
    /// them (at-least-once).
    Offsets,
    /// Ending the transaction (exactly-once only).
    End,
}

impl CommitPhase {
    pub const ALL: [CommitPhase; 4] = [
        CommitPhase::Held,
        CommitPhase::Deliveries,
        CommitPhase::Offsets,
        CommitPhase::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommitPhase::Held => "held",
            CommitPhase::Deliveries => "deliveries",
            CommitPhase::Offsets => "offsets",
            CommitPhase::End => "end",
        }
    }
}
