//! Detector thresholds: worker-wide defaults in the settings file, per-program overrides
//! published through the code store.
//!
//! Shares are whole percentages and factors whole numbers, so every threshold can be set from an
//! environment variable or `--set` (which type values by the default's type) and compares
//! exactly, with no float rounding between the stream and the offline mode.

use serde::{Deserialize, Serialize};

/// Declares the per-program thresholds once: [`Thresholds`] holds the values in force,
/// [`ProgramSettings`] the same names as optional overrides, so the two can never drift apart.
macro_rules! thresholds {
    ($( $(#[doc = $doc:expr])* $name:ident : $ty:ty = $default:expr ),* $(,)?) => {
        /// The detector thresholds in force for one program.
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Thresholds {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Thresholds {
            fn default() -> Self {
                Thresholds { $( $name: $default, )* }
            }
        }

        /// Settings of one program, published with the code table (`codes program-settings`).
        /// Every field is optional; an absent one takes the worker-wide `[detectors.defaults]`.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ProgramSettings {
            $( $(#[doc = $doc])*
               #[serde(skip_serializing_if = "Option::is_none")]
               pub $name: Option<$ty>, )*
        }

        impl Thresholds {
            /// These values with a program's overrides applied.
            pub fn overridden_by(&self, program: Option<&ProgramSettings>) -> Thresholds {
                let mut out = self.clone();
                if let Some(program) = program {
                    $( if let Some(value) = &program.$name {
                        out.$name = value.clone();
                    } )*
                }
                out
            }
        }
    };
}

thresholds! {
    /// Whether a usage- or customer-limit breach also makes the conversion INVALID
    /// (`USAGE_LIMIT_EXCEEDED` / `CUSTOMER_LIMIT_EXCEEDED`) instead of only raising the alert.
    invalidate_on_limit_breach: bool = false,
    /// COLD_CODE_USE_RATE: a code's uses without an eligible click from its owner.
    cold_code_use: bool = true,
    cold_window_secs: u64 = 86_400,
    cold_min_uses: u64 = 20,
    /// Fires when the cold share is strictly above this percentage.
    cold_share_percent: u64 = 80,
    /// code_ids (`LI:RADIO10`) meant for offline media (radio, print, podcasts read aloud),
    /// whose uses are expected to come without clicks.
    cold_exempt_codes: Vec<String> = Vec::new(),
    /// CODE_VELOCITY_SPIKE: uses in one bucket against the mean of the buckets before it.
    velocity: bool = true,
    velocity_bucket_secs: u64 = 3_600,
    velocity_baseline_buckets: u64 = 24,
    /// Fires when a bucket's uses exceed this many times the baseline mean...
    velocity_factor: u64 = 5,
    /// ...and reach this absolute floor.
    velocity_floor: u64 = 20,
    /// USAGE_LIMIT_EXCEEDED / SINGLE_USE_CODE_REUSED, from the code's `Usage Limit`.
    usage_limit: bool = true,
    /// CUSTOMER_LIMIT_EXCEEDED, from the code's `Customer Limit`.
    customer_limit: bool = true,
    /// CODE_ENUMERATION_SUSPECTED: distinct codes per actor (customer, email, device, IP).
    enumeration: bool = true,
    enumeration_window_secs: u64 = 3_600,
    enumeration_distinct_codes: u64 = 5,
    enumeration_unknown_codes: u64 = 3,
    /// UNKNOWN_CODE_RATE: share of a program's orders with codes whose codes all match nothing.
    unknown_rate: bool = true,
    unknown_window_secs: u64 = 3_600,
    unknown_min_orders: u64 = 50,
    /// Fires when the unknown share is strictly above this percentage.
    unknown_share_percent: u64 = 20,
    /// SELF_REFERRAL_SUSPECTED: customer hashes equal to the credited partner's identity hashes.
    self_referral: bool = true,
    /// DUPLICATE_ORDER_ID: the same (program, event type, order id) with different content.
    duplicate_order_id: bool = true,
    /// HIGH_REVERSAL_RATE: the share of a code's or a partner's credited amount that refunds
    /// and cancellations took back, per window of the sales' event time. Needs
    /// `reversals.enabled` as well.
    reversal_rate: bool = true,
    reversal_window_secs: u64 = 7 * 86_400,
    /// Credited orders of the code or partner in the window before the share is judged.
    reversal_min_orders: u64 = 20,
    /// Fires when the reversed share of the credited amount is strictly above this percentage.
    reversal_share_percent: u64 = 50,
}

impl Thresholds {
    /// Problems with these values; `origin` names where they came from.
    pub fn check(&self, origin: &str, problems: &mut Vec<String>) {
        for (name, value) in [
            ("cold_window_secs", self.cold_window_secs),
            ("cold_min_uses", self.cold_min_uses),
            ("velocity_bucket_secs", self.velocity_bucket_secs),
            ("velocity_baseline_buckets", self.velocity_baseline_buckets),
            ("velocity_factor", self.velocity_factor),
            ("velocity_floor", self.velocity_floor),
            ("enumeration_window_secs", self.enumeration_window_secs),
            (
                "enumeration_distinct_codes",
                self.enumeration_distinct_codes,
            ),
            ("enumeration_unknown_codes", self.enumeration_unknown_codes),
            ("unknown_window_secs", self.unknown_window_secs),
            ("unknown_min_orders", self.unknown_min_orders),
            ("reversal_window_secs", self.reversal_window_secs),
            ("reversal_min_orders", self.reversal_min_orders),
        ] {
            if value == 0 {
                problems.push(format!("{origin}.{name} must be greater than 0"));
            }
        }
        for (name, value) in [
            ("cold_share_percent", self.cold_share_percent),
            ("unknown_share_percent", self.unknown_share_percent),
            ("reversal_share_percent", self.reversal_share_percent),
        ] {
            if value >= 100 {
                problems.push(format!("{origin}.{name} must be below 100"));
            }
        }
        if self.velocity_baseline_buckets > 1_000 {
            problems.push(format!(
                "{origin}.velocity_baseline_buckets must be at most 1000"
            ));
        }
        let year = 366 * 86_400;
        for (name, value) in [
            ("cold_window_secs", self.cold_window_secs),
            ("enumeration_window_secs", self.enumeration_window_secs),
            ("unknown_window_secs", self.unknown_window_secs),
            ("reversal_window_secs", self.reversal_window_secs),
            (
                "velocity_bucket_secs * (velocity_baseline_buckets + 1)",
                self.velocity_bucket_secs
                    .saturating_mul(self.velocity_baseline_buckets.saturating_add(1)),
            ),
        ] {
            if value > year {
                problems.push(format!("{origin}.{name} must be at most one year"));
            }
        }
    }
}

impl ProgramSettings {
    /// Problems with a program's overrides, judged against the built-in defaults.
    pub fn check(&self, problems: &mut Vec<String>) {
        Thresholds::default()
            .overridden_by(Some(self))
            .check("program settings", problems);
    }
}

/// Worker-wide detector settings (`[detectors]` in the settings file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSettings {
    /// Runs the stateful detectors (state in Redis at `store.redis_url`; in memory offline).
    pub enabled: bool,
    /// Key of the HMAC-SHA256 that turns customer, email, device and IP identifiers into the
    /// references used in Redis keys and alerts. Secret: set it with
    /// `PROMO__DETECTORS__CUSTOMER_HMAC_KEY`. Required (16+ bytes) when `enabled`.
    pub customer_hmac_key: super::Secret,
    /// Written next to every customer reference, so references made with a rotated key are
    /// recognisable.
    pub customer_hmac_key_id: String,
    /// During a key rotation, the key being replaced (secret, like the key:
    /// `PROMO__DETECTORS__CUSTOMER_HMAC_PREVIOUS_KEY`). Per-customer state kept under its
    /// pseudonyms is merged into the new key's as each customer is seen, so counts carry over;
    /// empty outside a rotation. See docs/operations.md, "Rotate the customer HMAC key".
    pub customer_hmac_previous_key: super::Secret,
    /// The id of `customer_hmac_previous_key` (the `customer_hmac_key_id` it was used with).
    pub customer_hmac_previous_key_id: String,
    /// How long an order's recorded outcome is kept: a replay within this time gives the same
    /// outputs, and a different record with the same order id within it is a DUPLICATE_ORDER_ID.
    /// Should cover the input topic's retention if offsets may be reset.
    pub replay_ttl_secs: u64,
    /// How long usage- and customer-limit counts live after a code's last use.
    pub limit_ttl_secs: u64,
    /// How long a window's state outlives the window, for events arriving late.
    pub grace_secs: u64,
    /// Thresholds of every program without its own published settings.
    pub defaults: Thresholds,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            enabled: false,
            customer_hmac_key: super::Secret::default(),
            customer_hmac_key_id: "1".into(),
            customer_hmac_previous_key: super::Secret::default(),
            customer_hmac_previous_key_id: String::new(),
            replay_ttl_secs: 7 * 86_400,
            limit_ttl_secs: 400 * 86_400,
            grace_secs: 86_400,
            defaults: Thresholds::default(),
        }
    }
}

/// A short key is guessable by brute force over the few billion plausible emails.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

impl DetectorSettings {
    pub fn check(&self, problems: &mut Vec<String>) {
        if self.enabled && self.customer_hmac_key.expose().len() < MIN_HMAC_KEY_BYTES {
            problems.push(format!(
                "detectors.customer_hmac_key must be set, at least {MIN_HMAC_KEY_BYTES} bytes, when detectors.enabled is true (set it from a secret: PROMO__DETECTORS__CUSTOMER_HMAC_KEY)"
            ));
        }
        if !valid_key_id(&self.customer_hmac_key_id) {
            problems.push(
                "detectors.customer_hmac_key_id must be non-empty letters, digits, - or _".into(),
            );
        }
        if !self.customer_hmac_previous_key.is_empty() {
            if self.customer_hmac_previous_key.expose().len() < MIN_HMAC_KEY_BYTES {
                problems.push(format!(
                    "detectors.customer_hmac_previous_key must be at least {MIN_HMAC_KEY_BYTES} bytes"
                ));
            }
            if self.customer_hmac_previous_key == self.customer_hmac_key {
                problems.push(
                    "detectors.customer_hmac_previous_key is the same as customer_hmac_key; leave it empty outside a rotation".into(),
                );
            }
            if !valid_key_id(&self.customer_hmac_previous_key_id)
                || self.customer_hmac_previous_key_id == self.customer_hmac_key_id
            {
                problems.push(
                    "detectors.customer_hmac_previous_key_id must name the previous key (letters, digits, - or _), differently from customer_hmac_key_id".into(),
                );
            }
        }
        for (name, value) in [
            ("replay_ttl_secs", self.replay_ttl_secs),
            ("limit_ttl_secs", self.limit_ttl_secs),
        ] {
            if value == 0 {
                problems.push(format!("detectors.{name} must be greater than 0"));
            }
        }
        self.defaults.check("detectors.defaults", problems);
    }

    /// The thresholds for one program.
    pub fn for_program(&self, program: Option<&ProgramSettings>) -> Thresholds {
        self.defaults.overridden_by(program)
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_key_needs_its_own_id_and_is_never_printed() {
        let mut settings = DetectorSettings {
            enabled: true,
            customer_hmac_key: "new-key-0123456789".into(),
            customer_hmac_key_id: "2".into(),
            customer_hmac_previous_key: "old-key-0123456789".into(),
            ..DetectorSettings::default()
        };
        let mut problems = Vec::new();
        settings.check(&mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("customer_hmac_previous_key_id"),
            "{problems:?}"
        );
        settings.customer_hmac_previous_key_id = "1".into();
        let mut problems = Vec::new();
        settings.check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let shown = serde_json::to_string(&settings).expect("serialize");
        assert!(!shown.contains("old-key"), "{shown}");
        settings.customer_hmac_previous_key = settings.customer_hmac_key.clone();
        let mut problems = Vec::new();
        settings.check(&mut problems);
        assert!(
            problems[0].contains("the same as customer_hmac_key"),
            "{problems:?}"
        );
    }

    #[test]
    fn program_overrides_only_what_they_name() {
        let program = ProgramSettings {
            velocity_floor: Some(3),
            cold_code_use: Some(false),
            ..ProgramSettings::default()
        };
        let settings = DetectorSettings::default();
        let resolved = settings.for_program(Some(&program));
        assert_eq!(resolved.velocity_floor, 3);
        assert!(!resolved.cold_code_use);
        assert_eq!(resolved.velocity_factor, settings.defaults.velocity_factor);
        assert_eq!(settings.for_program(None), settings.defaults);
    }

    #[test]
    fn enabled_without_a_key_is_a_problem_and_the_key_is_never_printed() {
        let mut settings = DetectorSettings {
            enabled: true,
            ..DetectorSettings::default()
        };
        let mut problems = Vec::new();
        settings.check(&mut problems);
        assert!(problems[0].contains("customer_hmac_key"), "{problems:?}");
        settings.customer_hmac_key = "0123456789abcdef-secret".into();
        let mut problems = Vec::new();
        settings.check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let text = toml::to_string(&settings).expect("serialize");
        assert!(
            !text.contains("secret") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn program_settings_reject_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<ProgramSettings>("velocity_flor = 3").is_err());
        let program: ProgramSettings =
            toml::from_str("cold_share_percent = 100\nvelocity_factor = 0").expect("parses");
        let mut problems = Vec::new();
        program.check(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
