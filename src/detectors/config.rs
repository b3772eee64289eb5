//! Detector thresholds: worker-wide defaults in the settings file, per-program overrides
//! published through the code store.

use serde::{Deserialize, Serialize};

/// Settings of one program, published with the code table (`codes program-settings`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramSettings {}

/// Worker-wide detector settings (`[detectors]` in the settings file).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSettings {}

impl DetectorSettings {
    pub fn check(&self, _problems: &mut Vec<String>) {}
}
