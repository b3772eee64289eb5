//! A codes CSV through the validating loader and the indexes: no panic, and for every probe the
//! regex index finds exactly the regex codes a plain scan (each pattern run on its own) finds.
//! The input is the CSV, a NUL byte, then probes separated by NUL bytes.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use promo_attribution::codes::load::read_codes_lenient;
use promo_attribution::codes::normalize::trim_entered;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::codes::{CodeTable, MatchType};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let csv = parts.next().unwrap_or_default();
    let probes: Vec<String> = parts
        .take(8)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let (entries, _problems) = read_codes_lenient(csv, "fuzz.csv");
    let Ok(table) = CodeTable::build(entries, Vec::new(), "fuzz", "fuzz", BuildOptions::default())
    else {
        return;
    };
    // Each pattern compiled once per input, as a plain scan would: probes reuse them.
    let compiled: Vec<Option<regex::Regex>> = table
        .built_entries()
        .iter()
        .map(|e| {
            (e.match_type == MatchType::Regex)
                .then(|| regex::Regex::new(&e.code).ok())
                .flatten()
        })
        .collect();
    let programs: BTreeSet<&str> = table.rows().map(|e| &*e.program_id).collect();
    for program_id in programs {
        let Some(program) = table.program(program_id) else {
            panic!("program {program_id} has rows but no matcher");
        };
        for probe in &probes {
            let found: BTreeSet<u32> = table
                .all_matches(program, probe)
                .into_iter()
                .filter(|&id| table.entry(id).match_type == MatchType::Regex)
                .collect();
            let trimmed = trim_entered(probe);
            let scanned: BTreeSet<u32> = table
                .built_entries()
                .iter()
                .zip(&compiled)
                .enumerate()
                .filter(|(_, (e, re))| {
                    &*e.program_id == program_id
                        && re.as_ref().is_some_and(|re| re.is_match(trimmed))
                })
                .map(|(id, _)| id as u32)
                .collect();
            assert_eq!(
                found, scanned,
                "program {program_id}, probe {probe:?}: the index and a plain scan disagree"
            );
        }
    }
});
