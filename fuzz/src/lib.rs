//! What the fuzz targets share: the sample code table, settings with every detector on and
//! thresholds low enough to fire within one input, the output schemas, and the checks every
//! output must pass. Built once per process: a fuzz run executes a target millions of times.

use std::sync::{Arc, OnceLock};

use jsonschema::Validator;
use promo_attribution::codes::CodeTable;
use promo_attribution::engine::Engine;
use promo_attribution::redis::store::Snapshot;
use promo_attribution::settings::Settings;
use serde_json::Value;

const SETTINGS: &str = r#"
[detectors]
enabled = true
customer_hmac_key = "fuzz-key-0123456789abcdef0123456789"

[detectors.defaults]
invalidate_on_limit_breach = true
cold_min_uses = 2
velocity_floor = 2
velocity_factor = 1
velocity_baseline_buckets = 1
enumeration_distinct_codes = 2
enumeration_unknown_codes = 1
unknown_min_orders = 2
reversal_min_orders = 1
reversal_share_percent = 10

[reversals]
enabled = true
"#;

pub struct Fixture {
    pub engine: Engine,
    pub table: CodeTable,
    pub conversion: Validator,
    pub alert: Validator,
    pub adjustment: Validator,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let settings = Settings::from_toml_str(SETTINGS, "fuzz settings")
            .unwrap_or_else(|e| panic!("the fuzz settings are invalid: {e}"));
        let table = Snapshot::decode(
            &include_bytes!("../../samples/codes.csv")[..],
            include_bytes!("../../samples/partners.csv"),
            b"{}",
            "samples",
        )
        .and_then(|snapshot| snapshot.build("fuzz", "samples"))
        .unwrap_or_else(|e| panic!("the sample table does not load: {e}"));
        Fixture {
            engine: Engine::new(Arc::new(settings)),
            table,
            conversion: validator(include_str!("../../schema/conversion.schema.json")),
            alert: validator(include_str!("../../schema/alert.schema.json")),
            adjustment: validator(include_str!("../../schema/adjustment.schema.json")),
        }
    })
}

fn validator(schema: &str) -> Validator {
    let schema: Value = serde_json::from_str(schema).unwrap_or_else(|e| panic!("schema: {e}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// Panics (a finding) when `output` breaks `validator`.
pub fn assert_valid(validator: &Validator, output: &[u8], what: &str) {
    let value: Value = serde_json::from_slice(output).unwrap_or_else(|e| {
        panic!(
            "{what} is not JSON ({e}): {}",
            String::from_utf8_lossy(output)
        )
    });
    if let Some(error) = validator.iter_errors(&value).next() {
        panic!(
            "{what} breaks its schema at {}: {error}\n{value}",
            error.instance_path().as_str()
        );
    }
}

/// The customer identifiers of an order (customer id, email hash, IP and device hashes) that
/// must never appear in an output: those long enough not to match by chance and absent from the
/// rest of the order (an identifier equal to, say, the order id may show up as the order id).
pub fn customer_identifiers(record: &[u8]) -> Vec<String> {
    let Ok(Value::Object(mut order)) = serde_json::from_slice::<Value>(record) else {
        return Vec::new();
    };
    let mut identifiers = Vec::new();
    for (object, fields) in [
        ("customer", &["id", "email_sha256"][..]),
        ("risk", &["ip_hash", "device_hash"][..]),
    ] {
        if let Some(Value::Object(inner)) = order.remove(object) {
            for field in fields {
                if let Some(Value::String(value)) = inner.get(*field) {
                    identifiers.push(value.clone());
                }
            }
        }
    }
    let rest = Value::Object(order).to_string();
    identifiers.retain(|id| id.len() >= 6 && !rest.contains(id.as_str()));
    identifiers
}
