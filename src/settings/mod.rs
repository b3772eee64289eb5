//! The one typed `Settings` value, read from a TOML file, environment overrides and flags (see
//! [`sources`]), and passed explicitly to whatever needs it. Every field has a default, so an empty
//! file (or no file) is a valid configuration for the offline mode.

pub mod detectors;
mod origin;
mod reversals;
pub mod secret;
mod shadow;
mod sources;
mod store;
mod worker;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use detectors::DetectorSettings;
pub use origin::{Origin, Origins};
pub use reversals::{AfterLock, ReversalSettings};
pub use secret::{Properties, RedisUrl, Secret, redacted_url};
pub use sources::{ENV_PREFIX, FlagOverride, SettingsSources};
pub use store::{RedisMode, StoreSettings};
pub use worker::{
    AdminSettings, CodeSource, CodesSettings, Delivery, KafkaSettings, LogFormat, WorkerSettings,
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub attribution: AttributionSettings,
    pub limits: InputLimits,
    pub kafka: KafkaSettings,
    pub codes: CodesSettings,
    pub store: StoreSettings,
    pub detectors: DetectorSettings,
    pub admin: AdminSettings,
    pub worker: WorkerSettings,
    pub reversals: ReversalSettings,
}

/// What to do when the click winner used a code another partner owns (impact: the winner's
/// conversion is invalid; Everflow and Rakuten: the click wins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForeignCodeRule {
    #[default]
    Invalidate,
    CreditClickWinner,
}

impl ForeignCodeRule {
    /// The serde spelling, for writers that bypass serde.
    pub fn as_str(self) -> &'static str {
        match self {
            ForeignCodeRule::Invalidate => "invalidate",
            ForeignCodeRule::CreditClickWinner => "credit_click_winner",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionSettings {
    pub foreign_code: ForeignCodeRule,
    /// Per-program overrides, keyed by program id.
    pub programs: BTreeMap<String, ProgramOverrides>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramOverrides {
    pub foreign_code: Option<ForeignCodeRule>,
}

impl AttributionSettings {
    pub fn foreign_code_for(&self, program_id: &str) -> ForeignCodeRule {
        self.programs
            .get(program_id)
            .and_then(|p| p.foreign_code)
            .unwrap_or(self.foreign_code)
    }
}

/// Bounds on one input record. A record over any of them is rejected whole (dead-lettered by the
/// worker, reported by the offline mode), never truncated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputLimits {
    pub max_message_bytes: usize,
    pub max_codes_per_order: usize,
    /// impact's tracking parameter is a String(64); twice that leaves room for padding and
    /// multi-byte characters while still stopping garbage.
    pub max_code_bytes: usize,
    pub max_touchpoints_per_order: usize,
    /// Every identifier of an order: `order_id`, `program_id`, `event_id`, `event_type`,
    /// `touchpoints[].partner_id` and `click_id`, `customer.id`, `email_sha256` and `status`,
    /// `risk.ip_hash` and `device_hash`. They become Redis keys, set members and output fields,
    /// so a 60 KB id would cost 60 KB in each; 256 bytes fits any UUID, hash or composite id.
    pub max_id_bytes: usize,
    /// `currency`: an ISO 4217 code is 3 letters.
    pub max_currency_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_message_bytes: 64 * 1024,
            max_codes_per_order: 20,
            max_code_bytes: 128,
            max_touchpoints_per_order: 200,
            max_id_bytes: 256,
            max_currency_bytes: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid settings file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Problems(Vec<String>),
}

impl Settings {
    /// Settings from TOML text alone. Errors give the line and message, never the text (a
    /// line may hold a secret).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Settings, SettingsError> {
        let settings: Settings = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            SettingsError::Invalid {
                path: origin.to_string(),
                message: format!("line {line}: {}", e.message().trim()),
            }
        })?;
        settings
            .check()
            .map_err(|problems| SettingsError::Invalid {
                path: origin.to_string(),
                message: problems.join("; "),
            })?;
        Ok(settings)
    }

    /// Settings from a file alone (no environment, no flags).
    pub fn from_file(path: &Path) -> Result<Settings, SettingsError> {
        SettingsSources {
            file: Some(path.to_path_buf()),
            ..SettingsSources::default()
        }
        .load()
    }

    /// Every value that parses but makes no sense, all at once.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let limits = &self.limits;
        let mut problems = Vec::new();
        self.kafka.check(&mut problems);
        self.worker.check(&mut problems);
        self.store.check(&mut problems);
        self.codes.check(&mut problems);
        self.detectors.check(&mut problems);
        self.reversals.check(&mut problems);
        if let Err(problem) = self.admin.listen_addr() {
            problems.push(problem);
        }
        if self.admin.stall_after_secs == 0 {
            problems.push("admin.stall_after_secs must be greater than 0".into());
        }
        self.admin.check_limits(&mut problems);
        for (name, value) in [
            ("limits.max_message_bytes", limits.max_message_bytes),
            ("limits.max_codes_per_order", limits.max_codes_per_order),
            ("limits.max_code_bytes", limits.max_code_bytes),
            (
                "limits.max_touchpoints_per_order",
                limits.max_touchpoints_per_order,
            ),
            ("limits.max_id_bytes", limits.max_id_bytes),
            ("limits.max_currency_bytes", limits.max_currency_bytes),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let settings = Settings::from_toml_str("", "test").expect("valid");
        assert_eq!(settings, Settings::default());
        assert_eq!(
            settings.attribution.foreign_code,
            ForeignCodeRule::Invalidate
        );
    }

    #[test]
    fn program_override_wins() {
        let text = r#"
            [attribution]
            foreign_code = "invalidate"
            [attribution.programs."42"]
            foreign_code = "credit_click_winner"
        "#;
        let settings = Settings::from_toml_str(text, "test").expect("valid");
        assert_eq!(
            settings.attribution.foreign_code_for("42"),
            ForeignCodeRule::CreditClickWinner
        );
        assert_eq!(
            settings.attribution.foreign_code_for("7"),
            ForeignCodeRule::Invalidate
        );
    }

    #[test]
    fn typos_and_zero_limits_are_rejected() {
        assert!(
            Settings::from_toml_str("[attribution]\nforeign_cod = \"invalidate\"", "t").is_err()
        );
        let err =
            Settings::from_toml_str("[limits]\nmax_code_bytes = 0\nmax_codes_per_order = 0", "t")
                .expect_err("zero limits");
        let text = err.to_string();
        assert!(
            text.contains("max_code_bytes") && text.contains("max_codes_per_order"),
            "{text}"
        );
    }
}
