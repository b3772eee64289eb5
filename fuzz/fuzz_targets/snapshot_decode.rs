//! A stored version's three values (codes CSV, partners CSV, program settings JSON), as read
//! from Redis, through the decoder and the indexes: refused with a reason or loaded, never a
//! panic; a decoded snapshot encodes and decodes to itself. The input is the three values
//! separated by NUL bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promo_attribution::redis::store::Snapshot;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let codes = parts.next().unwrap_or_default();
    let partners = parts.next().unwrap_or_default();
    let programs = parts.next().unwrap_or_default();
    let Ok(mut snapshot) = Snapshot::decode(codes, partners, programs, "fuzz") else {
        return;
    };
    let encoded = snapshot
        .encode()
        .unwrap_or_else(|e| panic!("a decoded snapshot does not encode: {e}"));
    let codes = encoded.code_chunks.concat();
    let mut again = Snapshot::decode(codes.as_slice(), &encoded.partners, &encoded.programs, "fuzz again")
        .unwrap_or_else(|e| panic!("an encoded snapshot does not decode: {e}"));
    // Line numbers say where a row was read; blank or quoted multi-line input moves them.
    for entry in snapshot.entries.iter_mut().chain(again.entries.iter_mut()) {
        entry.source_line = 0;
    }
    assert_eq!(again, snapshot, "encode then decode changed the snapshot");
    let _ = snapshot.build("fuzz", "fuzz");
});
