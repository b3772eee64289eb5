//! Stateful misuse detectors (issue 5). Pure: state lives behind [`DetectorState`], so the
//! offline mode runs them in memory ([`MemoryState`]) and the worker against Redis
//! ([`crate::redis::detector_state::RedisState`]), with the same results for the same sequence of orders.
//!
//! An order goes through three steps: [`Detectors::plan`] lists what it changes in the shared
//! state (from the order and its decision alone), the state applies a batch of plans atomically
//! per order, and [`Detectors::finish`] turns the counts that came back into alerts and, where a
//! program asks for it, an INVALID conversion. A detector's two parts, what it counts and what
//! it makes of the counts, change together, so they live together in one module of `kinds/`;
//! `plan.rs` and `report.rs` only walk the detectors in a fixed order.
//!
//! Windows are tumbling windows of **event time**, aligned on the Unix epoch; an order always
//! counts in the window of its own event time, however late it arrives (as long as the window's
//! state is still kept: `grace_secs`).
//!
//! One alert per incident: an alert's id is derived from (kind, program, subject, window), and it
//! is written when the incident starts and again each time its count reaches the next power of
//! two (1, 2, 4, 8, ... of the counted quantity), with the same id and a higher count; a reader
//! keeps the record with the highest count per id.

pub mod kinds;
pub mod memory;
pub mod plan;
pub mod report;
pub mod state;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::attribution::Decision;
use crate::codes::CodeTable;
use crate::schema::ValidOrder;

pub use crate::settings::detectors::{DetectorSettings, ProgramSettings, Thresholds};
pub use memory::MemoryState;
pub use plan::{Plan, program_tag};
pub use state::{DetectorState, OrderStep, StateError, StepOutcome, crossed_power_of_two};

/// The detectors of one worker or offline run: settings, key layout and the customer key.
#[derive(Clone)]
pub struct Detectors {
    settings: DetectorSettings,
    /// `<store.key_prefix>d:` — every detector key starts with it.
    prefix: String,
    mac: Hmac<Sha256>,
    /// The key being rotated out, while `customer_hmac_previous_key` is set.
    previous: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Detectors {
    /// `key_prefix` is the store's (`store.key_prefix`); the settings must have passed
    /// [`DetectorSettings::check`].
    pub fn new(settings: &DetectorSettings, key_prefix: &str) -> Detectors {
        // HMAC takes keys of any length (hashing long ones), so this cannot fail; an empty key
        // only reaches here when the detectors are off or in tests.
        let mac = keyed(settings.customer_hmac_key.expose());
        let previous = (!settings.customer_hmac_previous_key.is_empty())
            .then(|| keyed(settings.customer_hmac_previous_key.expose()));
        Detectors {
            settings: settings.clone(),
            prefix: format!("{key_prefix}d:"),
            mac,
            previous,
        }
    }

    pub fn settings(&self) -> &DetectorSettings {
        &self.settings
    }

    /// The thresholds in force for a program of `table`.
    pub fn thresholds(&self, table: &CodeTable, program_id: &str) -> Thresholds {
        self.settings
            .for_program(table.program_settings(program_id))
    }

    /// Keyed pseudonym of a customer, email, device or IP identifier: HMAC-SHA256 over
    /// `kind:value`, truncated to 128 bits (32 hex digits). Without the key it cannot be linked
    /// back to the identifier by guessing.
    pub fn pseudonym(&self, kind: &str, value: &str) -> String {
        pseudonym_with(&self.mac, kind, value)
    }

    /// The same pseudonym under the key being rotated out, during a rotation: where this
    /// identifier's state was kept until now.
    pub fn previous_pseudonym(&self, kind: &str, value: &str) -> Option<String> {
        self.previous
            .as_ref()
            .map(|mac| pseudonym_with(mac, kind, value))
    }

    /// Lists the state changes of one order.
    pub fn plan(&self, order: &ValidOrder<'_>, decision: &Decision<'_>, table: &CodeTable) -> Plan {
        plan::plan(self, order, decision, table)
    }

    /// Applies what the state answered: detector alerts appended to the decision, and the
    /// conversion made INVALID for a duplicate or (when the program says so) a limit breach.
    pub fn finish<'a>(
        &self,
        plan: &Plan,
        outcome: &StepOutcome,
        order: &'a ValidOrder<'a>,
        decision: &mut Decision<'a>,
        table: &'a CodeTable,
    ) {
        report::finish(self, plan, outcome, order, decision, table);
    }
}

fn pseudonym_with(mac: &Hmac<Sha256>, kind: &str, value: &str) -> String {
    let mut mac = mac.clone();
    mac.update(kind.as_bytes());
    mac.update(b":");
    mac.update(value.trim().as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    crate::ids::hex128(u128::from_be_bytes(first))
}

fn keyed(key: &str) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable_key())
}

fn unreachable_key() -> Hmac<Sha256> {
    // Hmac<Sha256> accepts every key length; this path exists only to avoid a panic site.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// Seconds to milliseconds; settings are bounded by `check`, so saturation is only a guard.
pub(crate) fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}

/// Start of the tumbling window of `width_ms` holding `at_ms`.
pub fn window_start(at_ms: i64, width_ms: i64) -> i64 {
    at_ms.div_euclid(width_ms.max(1)) * width_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_written_at_powers_of_two() {
        let written: Vec<u64> = (0..40)
            .filter(|&n| crossed_power_of_two(n, n + 1))
            .map(|n| n + 1)
            .collect();
        assert_eq!(written, [1, 2, 4, 8, 16, 32]);
        assert!(crossed_power_of_two(3, 9), "a jump over several levels");
        assert!(!crossed_power_of_two(5, 5));
    }

    #[test]
    fn windows_align_on_the_epoch_also_before_it() {
        assert_eq!(window_start(3_599_999, 3_600_000), 0);
        assert_eq!(window_start(3_600_000, 3_600_000), 3_600_000);
        assert_eq!(window_start(-1, 3_600_000), -3_600_000);
    }

    #[test]
    fn pseudonyms_depend_on_the_key_and_the_kind() {
        let settings = |key: &str| DetectorSettings {
            customer_hmac_key: key.into(),
            ..DetectorSettings::default()
        };
        let a = Detectors::new(&settings("key-a-0123456789"), "p:");
        let b = Detectors::new(&settings("key-b-0123456789"), "p:");
        assert_eq!(a.pseudonym("email", "x"), a.pseudonym("email", " x "));
        assert_ne!(a.pseudonym("email", "x"), b.pseudonym("email", "x"));
        assert_ne!(a.pseudonym("email", "x"), a.pseudonym("device", "x"));
        assert_eq!(a.pseudonym("email", "x").len(), 32);
    }

    #[test]
    fn pseudonyms_are_the_hmacs_first_sixteen_bytes_in_hex() {
        // Redis keys are made of these, so their spelling must never change between versions.
        let key = "key-a-0123456789";
        let detectors = Detectors::new(
            &DetectorSettings {
                customer_hmac_key: key.into(),
                ..DetectorSettings::default()
            },
            "p:",
        );
        for value in ["x", "someone@example.com", "10.0.0.1", ""] {
            let mut mac = keyed(key);
            mac.update(format!("email:{value}").as_bytes());
            let expected: String = mac.finalize().into_bytes()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(detectors.pseudonym("email", value), expected);
        }
    }
}
