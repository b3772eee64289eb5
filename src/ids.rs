//! Deterministic identifiers: the same input gives the same id in every run, on every worker, so
//! a replayed output is recognisable as a repeat by its id alone.
//!
//! XXH3-128 is a fixed, published algorithm (stable output across versions and platforms) and
//! costs a few nanoseconds on a 300-byte order; collisions are negligible at 2^-64 for billions
//! of ids, and the ids are not security tokens.

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Separates id families so a conversion id can never equal an alert id.
const CONVERSION_SEED: u64 = 0x636f_6e76; // "conv"
const ALERT_SEED: u64 = 0x616c_7274; // "alrt"

/// Parts of a typical alert id fit here, so the id is hashed without a heap buffer.
const STACK_MATERIAL: usize = 256;

/// Id of the conversion decided for one input record, from the record's exact bytes.
pub fn conversion_event_id(record: &[u8]) -> String {
    hex128(xxh3_128_with_seed(record, CONVERSION_SEED))
}

/// Id of an alert from its kind and subject parts. Parts are length-prefixed, so ("ab","c") and
/// ("a","bc") differ.
pub fn alert_id(parts: &[&str]) -> String {
    let len: usize = parts.iter().map(|p| p.len() + 8).sum();
    let hash = if len <= STACK_MATERIAL {
        let mut material = [0u8; STACK_MATERIAL];
        let filled = length_prefixed(parts, &mut material[..len]);
        xxh3_128_with_seed(filled, ALERT_SEED)
    } else {
        let mut material = vec![0u8; len];
        xxh3_128_with_seed(length_prefixed(parts, &mut material), ALERT_SEED)
    };
    hex128(hash)
}

/// Writes each part as its length (u64, little endian) and its bytes into `buf`, which is
/// exactly as long as that takes.
fn length_prefixed<'b>(parts: &[&str], buf: &'b mut [u8]) -> &'b [u8] {
    let mut at = 0;
    for part in parts {
        buf[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
        buf[at + 8..at + 8 + part.len()].copy_from_slice(part.as_bytes());
        at += 8 + part.len();
    }
    buf
}

/// `{:032x}` without the formatting machinery, which costs more than the hash itself: eight
/// digits at a time, each nibble spread into its own byte and turned into a digit in all
/// eight bytes at once.
pub(crate) fn hex128(value: u128) -> String {
    let mut hex = [0u8; 32];
    for (i, digits) in hex.chunks_exact_mut(8).enumerate() {
        let word = (value >> (96 - 32 * i)) as u32;
        digits.copy_from_slice(&hex_digits(word));
    }
    // Every byte is an ASCII hex digit, so this never takes the empty default.
    std::str::from_utf8(&hex)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The eight lower-case hex digits of `word`, most significant first.
fn hex_digits(word: u32) -> [u8; 8] {
    const LOW_NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Nibble i (from the least significant) into byte i.
    let mut x = u64::from(word);
    x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
    x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
    x = (x | x << 4) & LOW_NIBBLES;
    // A byte of 10 or more carries into its high nibble when 6 is added: those become a-f.
    let letters = ((x + ONES * 6) >> 4) & ONES;
    let ascii = x + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10);
    ascii.to_be_bytes()
}

/// Fingerprint of file contents, used as the version of a table read from files.
pub fn content_version(parts: &[&[u8]]) -> String {
    let parts: Vec<&[&[u8]]> = parts.iter().map(std::slice::from_ref).collect();
    format!("file-{}", content_fingerprint(&parts))
}

/// 16 hex digits identifying a sequence of byte strings, each given as the slices it is stored
/// in (a stored code table is a list of CSV chunks): the same bytes give the same fingerprint
/// however they are split, and moving bytes from one part to the next changes it.
pub fn content_fingerprint(parts: &[&[&[u8]]]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for slices in parts {
        let length: usize = slices.iter().map(|s| s.len()).sum();
        hasher.update(&(length as u64).to_le_bytes());
        for slice in *slices {
            hasher.update(slice);
        }
    }
    format!("{:016x}", hasher.digest128() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_128;

    /// The id as first defined: a heap buffer and `format!`.
    fn reference_alert_id(parts: &[&str]) -> String {
        let mut material = Vec::new();
        for part in parts {
            material.extend_from_slice(&(part.len() as u64).to_le_bytes());
            material.extend_from_slice(part.as_bytes());
        }
        format!("{:032x}", xxh3_128_with_seed(&material, ALERT_SEED))
    }

    proptest::proptest! {
        #[test]
        fn alert_id_is_the_reference_id(parts in proptest::collection::vec(".{0,90}", 0..6)) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(alert_id(&parts), reference_alert_id(&parts));
        }

        #[test]
        fn hex_is_format_hex(value in proptest::prelude::any::<u128>()) {
            proptest::prop_assert_eq!(hex128(value), format!("{value:032x}"));
        }
    }

    #[test]
    fn ids_are_stable_and_separated() {
        assert_eq!(conversion_event_id(b"x"), conversion_event_id(b"x"));
        assert_ne!(conversion_event_id(b"x"), conversion_event_id(b"y"));
        assert_ne!(alert_id(&["ab", "c"]), alert_id(&["a", "bc"]));
        assert_eq!(alert_id(&["k"]).len(), 32);
        // Pinned so an accidental change of algorithm or seed (which would break replay
        // recognition across versions) fails loudly.
        assert_eq!(
            conversion_event_id(b"order"),
            "078b0cc50dc5009283801abff9770c38"
        );
        assert_eq!(
            conversion_event_id(b""),
            format!("{:032x}", xxh3_128_with_seed(b"", CONVERSION_SEED))
        );
        assert!(content_version(&[b"a"]).starts_with("file-"));
        assert_ne!(content_version(&[b"a", b""]), content_version(&[b"", b"a"]));
        // The file fingerprint as first defined, so file tables keep their versions.
        let joined: Vec<u8> = [&b"ab"[..], b"c"]
            .iter()
            .flat_map(|p| {
                (p.len() as u64)
                    .to_le_bytes()
                    .into_iter()
                    .chain(p.iter().copied())
            })
            .collect();
        assert_eq!(
            content_version(&[b"ab", b"c"]),
            format!("file-{:016x}", xxh3_128(&joined) as u64)
        );
        assert_eq!(
            content_fingerprint(&[&[b"a", b"b"], &[b"c"]]),
            content_fingerprint(&[&[b"ab"], &[b"c"]])
        );
        assert_ne!(
            content_fingerprint(&[&[b"ab"], &[b"c"]]),
            content_fingerprint(&[&[b"a"], &[b"bc"]])
        );
    }
}
