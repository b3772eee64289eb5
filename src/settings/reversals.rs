//! Refunds, cancellations and partial returns (`[reversals]` in the settings file).

use serde::{Deserialize, Serialize};

/// What an adjustment after the lock period does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterLock {
    /// Writes the adjustment record (with `after_lock: true`) and an ADJUSTMENT_AFTER_LOCK alert.
    #[default]
    Emit,
    /// Writes only the alert: the payout is final, the adjustment changes nothing.
    AlertOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReversalSettings {
    /// Keeps a summary of every decision and turns adjustment events into adjustment records.
    /// Off by default: an existing deployment's refund events keep being read as orders until
    /// it opts in (and creates the adjustments topic).
    pub enabled: bool,
    /// `event_type` values that are adjustments of an earlier order, not orders of their own.
    pub adjustment_types: Vec<String>,
    /// Where adjustment records go (keyed by order id).
    pub topic: String,
    /// impact.com's locking period: an adjustment whose event time is later than the original's
    /// by more than this is after the lock.
    pub lock_secs: u64,
    /// How long a decision summary is kept beyond the lock period (late adjustments, replays).
    pub grace_secs: u64,
    /// How long a decision summary is kept; 0 (the default) means `lock_secs + grace_secs`. An
    /// adjustment for an order whose summary is gone is ADJUSTMENT_WITHOUT_CONVERSION.
    pub retention_secs: u64,
    pub after_lock: AfterLock,
}

impl Default for ReversalSettings {
    fn default() -> Self {
        ReversalSettings {
            enabled: false,
            adjustment_types: vec!["cancel".into(), "refund".into()],
            topic: "promo.adjustments".into(),
            lock_secs: 30 * 86_400,
            grace_secs: 7 * 86_400,
            retention_secs: 0,
            after_lock: AfterLock::Emit,
        }
    }
}

impl ReversalSettings {
    pub fn retention_secs(&self) -> u64 {
        match self.retention_secs {
            0 => self.lock_secs.saturating_add(self.grace_secs),
            secs => secs,
        }
    }

    pub fn is_adjustment(&self, event_type: &str) -> bool {
        self.enabled && self.adjustment_types.iter().any(|t| t == event_type)
    }

    pub fn check(&self, problems: &mut Vec<String>) {
        if self.enabled {
            if self.adjustment_types.iter().any(|t| t.trim().is_empty()) {
                problems.push("reversals.adjustment_types must not hold an empty type".into());
            }
            if self.topic.trim().is_empty() {
                problems.push("reversals.topic must be set when reversals.enabled".into());
            }
            if self.retention_secs() == 0 {
                problems.push(
                    "reversals.retention_secs (or lock_secs + grace_secs) must be greater than 0"
                        .into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_defaults_to_lock_plus_grace_and_types_are_exact() {
        let settings = ReversalSettings {
            enabled: true,
            ..ReversalSettings::default()
        };
        assert_eq!(settings.retention_secs(), 37 * 86_400);
        assert!(settings.is_adjustment("refund") && !settings.is_adjustment("Refund"));
        let off = ReversalSettings {
            enabled: false,
            ..ReversalSettings::default()
        };
        assert!(!off.is_adjustment("refund"), "off: a refund is an order");
        let mut problems = Vec::new();
        ReversalSettings {
            enabled: true,
            retention_secs: 0,
            lock_secs: 0,
            grace_secs: 0,
            topic: " ".into(),
            ..ReversalSettings::default()
        }
        .check(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
