//! Settings text through the parser and the checks: accepted or refused with a message, never a
//! panic; accepted settings build an engine.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use promo_attribution::engine::Engine;
use promo_attribution::settings::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = Settings::from_toml_str(text, "fuzz.toml") {
        let _ = Engine::new(Arc::new(settings));
    }
});
