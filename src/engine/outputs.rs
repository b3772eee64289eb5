//! What the engine hands back: per input record, either its serialized conversion and alerts
//! (key and value bytes, already size-checked) or why it is dead-lettered.
//!
//! Everything lives in one byte arena and two vectors that are reused from batch to batch, so
//! the common path allocates nothing per order for its outputs.

use std::ops::Range;

use super::EngineError;
use crate::attribution::Decision;
use crate::reversals::output::Finished;
use crate::schema::{
    AdjustmentKind, Alert, AlertKind, Basis, InvalidReason, OrderError, Reason, Status, ValidOrder,
};
use crate::timefmt::Instant;

/// Why a record could not be decided: a stable reason (the dead-letter header and metric label)
/// and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    /// Every reason a record can be rejected for: [`OrderError::reason`]'s and the engine's own.
    pub const REASONS: [&'static str; 16] = [
        "oversize",
        "invalid_utf8",
        "malformed_json",
        "schema_violation",
        "unsupported_schema_version",
        "bad_timestamp",
        "too_many_codes",
        "too_many_touchpoints",
        "code_too_long",
        "field_too_long",
        "empty_record",
        "output_too_large",
        "adjustment_currency_mismatch",
        "adjustment_raises_amount",
        "adjustment_amount_overflow",
        "adjustment_state_unreadable",
    ];
}

impl From<&OrderError> for Rejection {
    fn from(err: &OrderError) -> Rejection {
        Rejection {
            reason: err.reason(),
            message: err.to_string(),
        }
    }
}

/// What was decided for a record, for metrics and logs; the record's bytes are its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub status: Status,
    pub basis: Option<Basis>,
    pub invalid_reason: Option<InvalidReason>,
    pub event_time: Instant,
    /// Set for an adjustment event (then `status` is the original's, or UNATTRIBUTED when it
    /// had none): there is no conversion, only an adjustment record or alerts.
    pub adjustment: Option<Adjusted>,
}

/// What an adjustment event gave, for metrics and run summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    /// An adjustment record of this kind and reason.
    Recorded(AdjustmentKind, Reason),
    /// No record: no stored decision, or after the lock with `after_lock = alert_only`.
    NotRecorded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Conversion,
    /// To `reversals.topic`.
    Adjustment,
    Alert(AlertKind),
}

/// One record to write: to the conversions topic or the alerts topic, by kind.
#[derive(Debug, Clone, Copy)]
pub struct Write<'o> {
    pub kind: WriteKind,
    pub key: &'o [u8],
    pub value: &'o [u8],
}

#[derive(Debug, Clone)]
struct WriteSpan {
    kind: WriteKind,
    key: Range<usize>,
    value: Range<usize>,
}

/// The outcome of one input record.
#[derive(Debug, Clone)]
pub struct RecordOutcome<'o> {
    /// Index of the record in the slice given to [`super::Engine::run`].
    pub input: usize,
    pub result: &'o Result<Decided, Rejection>,
    writes: &'o [WriteSpan],
    bytes: &'o [u8],
}

impl<'o> RecordOutcome<'o> {
    /// The conversion first, then the alerts in the order they were raised; nothing for a
    /// rejected record.
    pub fn writes(&self) -> impl Iterator<Item = Write<'o>> + 'o {
        let bytes = self.bytes;
        self.writes.iter().map(move |w| Write {
            kind: w.kind,
            key: &bytes[w.key.clone()],
            value: &bytes[w.value.clone()],
        })
    }
}

#[derive(Debug, Clone)]
struct Record {
    input: usize,
    result: Result<Decided, Rejection>,
    writes: Range<usize>,
}

/// The outcomes of the records run so far, in input order.
#[derive(Debug, Default)]
pub struct Outputs {
    bytes: Vec<u8>,
    writes: Vec<WriteSpan>,
    records: Vec<Record>,
}

/// A point to go back to when a batch fails half way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    bytes: usize,
    writes: usize,
    records: usize,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.writes.clear();
        self.records.clear();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordOutcome<'_>> {
        self.records.iter().map(|r| RecordOutcome {
            input: r.input,
            result: &r.result,
            writes: &self.writes[r.writes.clone()],
            bytes: &self.bytes,
        })
    }

    pub(super) fn mark(&self) -> Mark {
        Mark {
            bytes: self.bytes.len(),
            writes: self.writes.len(),
            records: self.records.len(),
        }
    }

    pub(super) fn truncate(&mut self, mark: Mark) {
        self.bytes.truncate(mark.bytes);
        self.writes.truncate(mark.writes);
        self.records.truncate(mark.records);
    }

    pub(super) fn push_rejection(&mut self, input: usize, rejection: Rejection) {
        let at = self.writes.len();
        self.records.push(Record {
            input,
            result: Err(rejection),
            writes: at..at,
        });
    }

    /// Serializes a decision straight into the arena. Every output is serialized before any is
    /// kept, so one the producer would refuse as too large turns the whole record into one dead
    /// letter instead of half a decision.
    pub(super) fn push_decision(
        &mut self,
        input: usize,
        order: &ValidOrder<'_>,
        decision: &Decision<'_>,
        max_value_bytes: usize,
    ) -> Result<(), EngineError> {
        let mark = self.mark();
        let conversion = &decision.conversion;
        self.push_write(
            WriteKind::Conversion,
            conversion.order_id.as_bytes(),
            |bytes| conversion.write_json(bytes),
        )
        .map_err(|e| serialize_error("conversion", e))?;
        self.push_alerts(&decision.alerts)?;
        if self.too_large(input, mark, max_value_bytes) {
            return Ok(());
        }
        self.records.push(Record {
            input,
            result: Ok(Decided {
                status: conversion.status,
                basis: conversion.basis,
                invalid_reason: conversion.invalid_reason,
                event_time: order.event_time,
                adjustment: None,
            }),
            writes: mark.writes..self.writes.len(),
        });
        Ok(())
    }

    /// Serializes an adjustment event's outputs (its record first, then its alerts), or its
    /// dead letter, with the same all-or-nothing size check as a decision.
    pub(super) fn push_adjustment(
        &mut self,
        input: usize,
        order: &ValidOrder<'_>,
        finished: &Finished,
        max_value_bytes: usize,
    ) -> Result<(), EngineError> {
        let (record, alerts) = match finished {
            Finished::Rejected { reason, message } => {
                self.push_rejection(
                    input,
                    Rejection {
                        reason,
                        message: message.clone(),
                    },
                );
                return Ok(());
            }
            Finished::Written { record, alerts, .. } => (record, alerts),
        };
        let mark = self.mark();
        if let Some(record) = record {
            self.push_write(WriteKind::Adjustment, record.order_id.as_bytes(), |bytes| {
                record.write_json(bytes)
            })
            .map_err(|e| serialize_error("adjustment", e))?;
        }
        self.push_alerts(alerts)?;
        if self.too_large(input, mark, max_value_bytes) {
            return Ok(());
        }
        self.records.push(Record {
            input,
            result: Ok(Decided {
                status: record
                    .as_ref()
                    .map_or(Status::Unattributed, |r| r.original_status),
                basis: record.as_ref().and_then(|r| r.basis),
                invalid_reason: None,
                event_time: order.event_time,
                adjustment: Some(match record {
                    Some(r) => Adjusted::Recorded(r.kind, r.reason),
                    None => Adjusted::NotRecorded,
                }),
            }),
            writes: mark.writes..self.writes.len(),
        });
        Ok(())
    }

    fn push_alerts(&mut self, alerts: &[Alert<'_>]) -> Result<(), EngineError> {
        for alert in alerts {
            self.push_write(
                WriteKind::Alert(alert.kind),
                alert.alert_id.as_bytes(),
                |bytes| alert.write_json(bytes),
            )
            .map_err(|e| serialize_error("alert", e))?;
        }
        Ok(())
    }

    /// Whether an output since `mark` is over the producer's limit; if so the record's outputs
    /// are dropped for one dead letter.
    fn too_large(&mut self, input: usize, mark: Mark, max_value_bytes: usize) -> bool {
        let largest = self.writes[mark.writes..]
            .iter()
            .map(|w| w.value.len())
            .max()
            .unwrap_or(0);
        if largest <= max_value_bytes {
            return false;
        }
        self.truncate(mark);
        self.push_rejection(
            input,
            Rejection {
                reason: "output_too_large",
                message: format!(
                    "an output of {largest} bytes exceeds the producer limit of {max_value_bytes} bytes"
                ),
            },
        );
        true
    }

    fn push_write(
        &mut self,
        kind: WriteKind,
        key: &[u8],
        serialize: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        let key_start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let value_start = self.bytes.len();
        serialize(&mut self.bytes)?;
        self.writes.push(WriteSpan {
            kind,
            key: key_start..value_start,
            value: value_start..self.bytes.len(),
        });
        Ok(())
    }
}

fn serialize_error(what: &'static str, err: serde_json::Error) -> EngineError {
    EngineError::Serialize {
        what,
        message: err.to_string(),
    }
}
