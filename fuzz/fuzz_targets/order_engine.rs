//! Order and adjustment bytes through the engine with every detector and reversals on: no panic, every output valid against
//! its schema, no raw customer identifier in any output. Each record also reads the same through
//! `parse_order` (its fast path) as through serde_json alone, value or error. The input is split at newlines into a
//! batch, so the detectors see several orders (duplicates, limits, enumeration) at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promo_attribution::detectors::MemoryState;
use promo_attribution::engine::{Outputs, WriteKind};
use promo_attribution::schema::{parse_order, parse_order_reference};
use promo_attribution::settings::InputLimits;
use promo_attribution_fuzz::{assert_valid, customer_identifiers, fixture};

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let records: Vec<&[u8]> = data.split(|&b| b == b'\n').take(16).collect();
    let limits = InputLimits::default();
    for record in &records {
        let fast = format!("{:?}", parse_order(record, &limits));
        let reference = format!("{:?}", parse_order_reference(record, &limits));
        assert_eq!(fast, reference, "record {:?}", String::from_utf8_lossy(record));
    }
    let mut state = MemoryState::new();
    let mut outputs = Outputs::default();
    if let Err(error) = fixture
        .engine
        .run(&fixture.table, Some(&mut state), &records, &mut outputs)
    {
        panic!("the engine failed a batch with an in-memory state: {error}");
    }
    let mut identifiers = Vec::new();
    for outcome in outputs.iter() {
        identifiers.extend(customer_identifiers(records[outcome.input]));
    }
    for outcome in outputs.iter() {
        for write in outcome.writes() {
            match write.kind {
                WriteKind::Conversion => {
                    assert_valid(&fixture.conversion, write.value, "conversion")
                }
                WriteKind::Adjustment => {
                    assert_valid(&fixture.adjustment, write.value, "adjustment")
                }
                WriteKind::Alert(_) => assert_valid(&fixture.alert, write.value, "alert"),
            }
            let text = String::from_utf8_lossy(write.value);
            for id in &identifiers {
                assert!(
                    !text.contains(id.as_str()),
                    "customer identifier {id:?} in an output: {text}"
                );
            }
        }
    }
});
