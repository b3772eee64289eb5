//! Shadow mode (`run --shadow`, `kafka.shadow = true`): a second worker beside production that
//! decides the same live input with its own code table or settings into shadow outputs, so the
//! two can be compared (`replay --verify-topic`, `report`) before the change goes live.
//!
//! It is a rename of existing settings, nothing more: every output topic, the consumer group
//! and the transactional id get `kafka.shadow_suffix` (default `.shadow`), so the shadow reads
//! every record itself without moving production's offsets and never fences a production
//! producer. The stateful detectors are off: their state in Redis is production's (counts,
//! per-order replay records), and a shadow must not count an order twice or answer a
//! production retry with its own result; an in-memory state would start empty at every start
//! and so disagree with production anyway. Detector outcomes are exactly what
//! `replay --verify-topic` reports as not comparable, so nothing comparable is lost.

use super::Settings;

impl Settings {
    /// The settings a shadow worker runs with, when `kafka.shadow` asks for it; otherwise
    /// unchanged. The result has `kafka.shadow` cleared, so `--check-config` prints a
    /// configuration that gives the same worker when read back (the suffix is not added twice).
    pub fn into_shadow_if_asked(mut self) -> Settings {
        if !self.kafka.shadow {
            return self;
        }
        let suffix = self.kafka.shadow_suffix.clone();
        let kafka = &mut self.kafka;
        // Taken before the group is renamed, so an empty id still derives from the host name.
        let transactional_id = format!("{}{suffix}", kafka.effective_transactional_id());
        for name in [
            &mut kafka.conversions_topic,
            &mut kafka.alerts_topic,
            &mut kafka.dlq_topic,
            &mut kafka.group_id,
        ] {
            name.push_str(&suffix);
        }
        kafka.transactional_id = transactional_id;
        kafka.shadow = false;
        self.detectors.enabled = false;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_renames_outputs_group_and_id_and_turns_detectors_off() {
        let mut settings = Settings::default();
        settings.kafka.transactional_id = "worker-0".into();
        settings.detectors.enabled = true;
        assert_eq!(settings.clone().into_shadow_if_asked(), settings);
        settings.kafka.shadow = true;
        let shadow = settings.clone().into_shadow_if_asked();
        let kafka = &shadow.kafka;
        assert_eq!(kafka.input_topic, "orders", "the same live input");
        assert_eq!(kafka.conversions_topic, "promo.conversions.shadow");
        assert_eq!(kafka.alerts_topic, "promo.alerts.shadow");
        assert_eq!(kafka.dlq_topic, "promo.dlq.shadow");
        assert_eq!(kafka.group_id, "promo-attribution.shadow");
        assert_eq!(kafka.transactional_id, "worker-0.shadow");
        assert!(!shadow.detectors.enabled);
        assert!(!kafka.shadow, "applied once");
        assert_eq!(shadow.clone().into_shadow_if_asked(), shadow);
    }

    #[test]
    fn an_empty_suffix_is_refused() {
        let mut settings = Settings::default();
        settings.kafka.shadow = true;
        settings.kafka.shadow_suffix = String::new();
        let problems = settings.check().expect_err("empty suffix");
        assert!(
            problems.iter().any(|p| p.contains("shadow_suffix")),
            "{problems:?}"
        );
    }
}
