//! The report's arithmetic, without I/O: conversion records in (as bytes), rows out.
//!
//! Each record is read once, borrowing from its bytes; only the fields the report needs are
//! looked at. Repeats of an `event_id` (a crash can leave byte-identical copies on the topic)
//! count once; a repeat whose bytes differ is a conflict that is counted and reported, and the
//! first record seen is the one that counts.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::decimal::Decimal;
use crate::schema::order::borrowed_opt;
use crate::schema::{Basis, InvalidReason, Status};
use crate::timefmt::{Instant, parse_rfc3339};

/// What the rows are per (besides program and currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Per promo code: conversions credited through it, and invalid ones naming it.
    Code,
    /// Per partner: conversions credited to it, and invalid ones that would have paid it.
    Partner,
    /// Per invalid reason: how many invalid conversions, and the money they carried.
    Reason,
}

/// Which conversions count.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub program: Option<String>,
    /// Inclusive bound on the conversion's `event_time` (the order's event time).
    pub from: Option<Instant>,
    /// Exclusive bound on the conversion's `event_time`.
    pub to: Option<Instant>,
}

/// One row of the report: a (program, subject, currency) group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub program_id: String,
    /// The code's `code_id`, the partner id, or the invalid reason (per [`By`]); `None` for an
    /// invalid conversion that names no partner.
    pub subject: Option<String>,
    /// By code: the owner named by the group's latest conversion (a code can be reassigned).
    pub owner_partner_id: Option<String>,
    owner_event_time: String,
    pub currency: Option<String>,
    /// CREDITED conversions (by code: through the code, basis CODE_*).
    pub credited: u64,
    /// Sum of `amount` over the credited conversions (by reason: over the invalid ones).
    pub revenue: Decimal,
    /// Sum of `discount` over the same conversions.
    pub discount: Decimal,
    /// Conversions counted in `revenue` that had no amount.
    pub without_amount: u64,
    pub invalid: u64,
    pub invalid_by_reason: BTreeMap<&'static str, u64>,
    /// With adjustments netted: adjustment records of credited conversions, and the amount
    /// they reversed (positive).
    pub reversed: Option<(u64, Decimal)>,
}

impl Row {
    /// Revenue less what adjustments reversed.
    pub fn net_revenue(&self) -> Option<Decimal> {
        let (_, reversed) = self.reversed?;
        self.revenue.checked_sub(reversed)
    }
}

/// What was read, besides the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub records: u64,
    /// Records whose `event_id` was already counted, with identical bytes.
    pub repeats: u64,
    /// Records whose `event_id` was already counted with different bytes (not counted).
    pub conflicting: u64,
    /// Records that are not conversions (malformed JSON, missing fields); skipped.
    pub unreadable: u64,
    /// Records outside `--program` / `--from` / `--to`.
    pub outside: u64,
    pub credited: u64,
    pub invalid: u64,
    pub unattributed: u64,
}

/// Why a record could not be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The record is skipped and the report goes on.
    #[error("not a conversion record: {0}")]
    Unreadable(String),
    /// An exact sum is impossible; the report stops rather than print a wrong number.
    #[error("event_id {event_id}: {field} {value} is not a number that sums exactly in 38 digits")]
    Money {
        event_id: String,
        field: &'static str,
        value: String,
    },
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    program_id: Cow<'a, str>,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
    status: Status,
    #[serde(default)]
    basis: Option<Basis>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    partner_id: Option<Cow<'a, str>>,
    #[serde(default)]
    invalid_reason: Option<InvalidReason>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    invalid_partner_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<CodeView<'a>>,
    // Conversions written before money was added have none of these: they count as null.
    #[serde(default, borrow)]
    amount: Option<&'a RawValue>,
    #[serde(default, borrow)]
    discount: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    currency: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CodeView<'a> {
    #[serde(borrow)]
    code_id: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    owner_partner_id: Option<Cow<'a, str>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct Aggregator {
    by: By,
    selection: Selection,
    /// event_id → hash of the bytes first seen with it.
    seen: FastMap<u128, u128>,
    index: FastMap<Vec<u8>, usize>,
    rows: Vec<Row>,
    key: Vec<u8>,
    stats: Stats,
}

impl Aggregator {
    pub fn new(by: By, selection: Selection) -> Self {
        Aggregator {
            by,
            selection,
            seen: FastMap::default(),
            index: FastMap::default(),
            rows: Vec::new(),
            key: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Counts one conversion record (one JSON line or one topic message).
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), AddError> {
        self.stats.records += 1;
        // One UTF-8 check of the whole record (fast on ASCII) spares serde_json a check of
        // every string it reads.
        let record: Record<'_> = match std::str::from_utf8(bytes)
            .map_err(|e| format!("not valid UTF-8 at byte {}", e.valid_up_to()))
            .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()))
        {
            Ok(record) => record,
            Err(e) => {
                self.stats.unreadable += 1;
                return Err(AddError::Unreadable(e));
            }
        };
        if !self.selected(&record)? {
            self.stats.outside += 1;
            return Ok(());
        }
        let id = id_key(&record.event_id);
        let content = xxhash_rust::xxh3::xxh3_128(bytes);
        match self.seen.entry(id) {
            // The first record's hash stays, so every later differing copy is a conflict.
            Entry::Occupied(first) => {
                if *first.get() == content {
                    self.stats.repeats += 1;
                } else {
                    self.stats.conflicting += 1;
                }
                return Ok(());
            }
            Entry::Vacant(slot) => {
                slot.insert(content);
            }
        }
        match record.status {
            Status::Credited => self.stats.credited += 1,
            Status::Invalid => self.stats.invalid += 1,
            Status::Unattributed => self.stats.unattributed += 1,
        }
        self.count(&record)
    }

    fn selected(&mut self, record: &Record<'_>) -> Result<bool, AddError> {
        if let Some(program) = &self.selection.program
            && record.program_id != program.as_str()
        {
            return Ok(false);
        }
        if self.selection.from.is_none() && self.selection.to.is_none() {
            return Ok(true);
        }
        let Some(at) = parse_rfc3339(&record.event_time) else {
            self.stats.unreadable += 1;
            return Err(AddError::Unreadable(format!(
                "event_time {:?} is not RFC 3339",
                record.event_time
            )));
        };
        Ok(self.selection.from.is_none_or(|from| at >= from)
            && self.selection.to.is_none_or(|to| at < to))
    }

    fn count(&mut self, r: &Record<'_>) -> Result<(), AddError> {
        let through_code = matches!(
            r.basis,
            Some(Basis::CodeAlways | Basis::CodeInvolved | Basis::CodeWinner)
        );
        let (subject, credited): (Option<&str>, bool) = match (self.by, r.status) {
            (By::Code, Status::Credited) if through_code => match &r.code {
                Some(code) => (Some(&code.code_id), true),
                None => return Ok(()),
            },
            (By::Code, Status::Invalid) => match &r.code {
                Some(code) => (Some(&code.code_id), false),
                None => return Ok(()),
            },
            (By::Partner, Status::Credited) => (r.partner_id.as_deref(), true),
            (By::Partner, Status::Invalid) => (r.invalid_partner_id.as_deref(), false),
            (By::Reason, Status::Invalid) => (r.invalid_reason.map(InvalidReason::as_str), false),
            _ => return Ok(()),
        };
        let at = self.row(&r.program_id, subject, r.currency.as_deref());
        let row = &mut self.rows[at];
        if self.by == By::Code
            && let Some(code) = &r.code
        {
            update_owner(row, code.owner_partner_id.as_deref(), &r.event_time);
        }
        if !credited {
            row.invalid += 1;
            if let Some(reason) = r.invalid_reason {
                *row.invalid_by_reason.entry(reason.as_str()).or_default() += 1;
            }
        }
        // Money goes with the credited conversions, and per reason with the invalid ones.
        if credited || self.by == By::Reason {
            row.credited += u64::from(credited);
            match r.amount {
                Some(amount) => add_money(&mut row.revenue, amount, "amount", &r.event_id)?,
                None => row.without_amount += 1,
            }
            if let Some(discount) = r.discount {
                add_money(&mut row.discount, discount, "discount", &r.event_id)?;
            }
        }
        Ok(())
    }

    /// The index of the row of (program, subject, currency), created empty when new. The key
    /// is built in a reused buffer, so finding an existing row allocates nothing.
    fn row(&mut self, program: &str, subject: Option<&str>, currency: Option<&str>) -> usize {
        self.key.clear();
        for part in [Some(program), subject, currency] {
            // Length-prefixed (a null has no length), so no text inside a part can make two
            // keys equal.
            match part {
                Some(text) => {
                    self.key.push(1);
                    self.key.extend_from_slice(&text.len().to_le_bytes());
                    self.key.extend_from_slice(text.as_bytes());
                }
                None => self.key.push(0),
            }
        }
        if let Some(&at) = self.index.get(self.key.as_slice()) {
            return at;
        }
        let at = self.rows.len();
        self.rows.push(Row {
            program_id: program.to_owned(),
            subject: subject.map(str::to_owned),
            owner_partner_id: None,
            owner_event_time: String::new(),
            currency: currency.map(str::to_owned),
            credited: 0,
            revenue: Decimal::ZERO,
            discount: Decimal::ZERO,
            without_amount: 0,
            invalid: 0,
            invalid_by_reason: BTreeMap::new(),
            reversed: None,
        });
        self.index.insert(self.key.clone(), at);
        at
    }

    /// Adds the counts of `other`, an aggregator of the same report over records none of which
    /// shares an `event_id` with this one's (see `parallel.rs`).
    pub fn merge(&mut self, other: Aggregator) -> Result<(), AddError> {
        for row in other.rows {
            let at = self.row(
                &row.program_id,
                row.subject.as_deref(),
                row.currency.as_deref(),
            );
            let mine = &mut self.rows[at];
            if !row.owner_event_time.is_empty() {
                update_owner(mine, row.owner_partner_id.as_deref(), &row.owner_event_time);
            }
            mine.credited += row.credited;
            mine.without_amount += row.without_amount;
            mine.invalid += row.invalid;
            for (reason, count) in row.invalid_by_reason {
                *mine.invalid_by_reason.entry(reason).or_default() += count;
            }
            let overflow = |field: &'static str, value: Decimal| AddError::Money {
                event_id: "(sum of two parts)".into(),
                field,
                value: value.to_string(),
            };
            mine.revenue = (mine.revenue.checked_add(row.revenue))
                .ok_or_else(|| overflow("revenue", row.revenue))?;
            mine.discount = (mine.discount.checked_add(row.discount))
                .ok_or_else(|| overflow("discount", row.discount))?;
        }
        let (s, o) = (&mut self.stats, other.stats);
        s.records += o.records;
        s.repeats += o.repeats;
        s.conflicting += o.conflicting;
        s.unreadable += o.unreadable;
        s.outside += o.outside;
        s.credited += o.credited;
        s.invalid += o.invalid;
        s.unattributed += o.unattributed;
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The rows, ordered by program, subject and currency (null first): the same input always
    /// gives the same output, whatever order the records came in.
    /// Nets adjustments against the rows: every row gets its reversed count and amount (0 when
    /// none), and a subject with reversals but no conversion selected gets a row of its own.
    pub fn net(&mut self, reversals: super::netting::Reversals) {
        for row in &mut self.rows {
            row.reversed = Some((0, Decimal::ZERO));
        }
        for ((program, subject, currency), (count, amount)) in reversals {
            let at = self.row(&program, subject.as_deref(), currency.as_deref());
            self.rows[at].reversed = Some((count, amount));
        }
    }

    pub fn finish(self) -> (Vec<Row>, Stats) {
        let mut rows = self.rows;
        rows.sort_by(|a, b| {
            (&a.program_id, &a.subject, &a.currency).cmp(&(&b.program_id, &b.subject, &b.currency))
        });
        (rows, self.stats)
    }
}

/// The 32 hex digits of an `event_id` as a number; any other id by its hash.
fn id_key(event_id: &str) -> u128 {
    if event_id.len() == 32
        && let Ok(value) = u128::from_str_radix(event_id, 16)
    {
        return value;
    }
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The owner named by the latest conversion (by event time, then the larger id), so the row
/// does not depend on the order records are read in.
fn update_owner(row: &mut Row, owner: Option<&str>, event_time: &str) {
    if row.owner_event_time.is_empty() {
        row.owner_partner_id = owner.map(str::to_owned);
        row.owner_event_time = event_time.to_owned();
        return;
    }
    if row.owner_partner_id.as_deref() == owner {
        return;
    }
    let key = |time: &str, owner: Option<&str>| (parse_rfc3339(time), owner.map(str::to_owned));
    if key(event_time, owner) > key(&row.owner_event_time, row.owner_partner_id.as_deref()) {
        row.owner_partner_id = owner.map(str::to_owned);
        row.owner_event_time = event_time.to_owned();
    }
}

fn add_money(
    sum: &mut Decimal,
    value: &RawValue,
    field: &'static str,
    event_id: &str,
) -> Result<(), AddError> {
    let text = value.get();
    if text == "null" {
        return Ok(());
    }
    Decimal::parse(text)
        .and_then(|v| sum.checked_add(v))
        .map(|total| *sum = total)
        .ok_or_else(|| AddError::Money {
            event_id: event_id.to_owned(),
            field,
            value: text.to_owned(),
        })
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
