//! The small fixed sets of label values the worker's metrics are broken down by.

use crate::schema::conversion::{Basis, InvalidReason, Status};

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

/// Where a label combination sits in [`conversion_label_sets`]; `None` for one it does not list.
pub(super) fn conversion_series_index(
    status: Status,
    basis: Option<Basis>,
    reason: Option<InvalidReason>,
) -> Option<usize> {
    match (status, basis, reason) {
        (Status::Credited, Some(basis), None) => Basis::ALL.iter().position(|b| *b == basis),
        (Status::Invalid, None, Some(reason)) => InvalidReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map(|i| Basis::ALL.len() + i),
        (Status::Unattributed, None, None) => Some(Basis::ALL.len() + InvalidReason::ALL.len()),
        _ => None,
    }
}

/// The (status, basis, reason) label sets a conversion can have: a basis only when credited, a
/// reason only when invalid.
pub(super) fn conversion_label_sets()
-> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    let credited = Basis::ALL
        .into_iter()
        .map(|basis| (Status::Credited.as_str(), basis.as_str(), ""));
    let invalid = InvalidReason::ALL
        .into_iter()
        .map(|reason| (Status::Invalid.as_str(), "", reason.as_str()));
    credited
        .chain(invalid)
        .chain([(Status::Unattributed.as_str(), "", "")])
}
