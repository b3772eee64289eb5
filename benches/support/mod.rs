//! Synthetic data shared by the benches: a code table shaped like the W3 workload of
//! `performance.md` (1M exact codes, 10k regex codes) and helpers to read resident memory.
//!
//! Everything is generated from a fixed seed, so two runs measure the same table and probes.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

pub mod corpus;

use std::collections::HashSet;

use chrono_tz::Tz;
use promo_attribution::codes::load::Interner;
use promo_attribution::codes::table::BuildOptions;
use promo_attribution::codes::{CodeEntry, CodeState, CodeType, CreditPolicy, MatchType, Partner};

#[path = "../../tests/support/rng.rs"]
mod rng;
pub use rng::Rng;

pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const DIGITS: &[u8] = b"0123456789";

pub fn random_from(rng: &mut Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.below(alphabet.len())] as char)
        .collect()
}

/// A random upper-case alphanumeric code of `min..=max` characters.
pub fn random_code(rng: &mut Rng, min: usize, max: usize) -> String {
    let len = rng.between(min, max);
    random_from(rng, ALNUM, len)
}

/// The code with each letter upper- or lower-cased at random, as customers type them.
pub fn random_case(rng: &mut Rng, code: &str) -> String {
    code.chars()
        .map(|c| {
            if rng.percent(50) {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// How big a synthetic table is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Exact codes in the main program `P1`.
    pub main_exact: usize,
    /// Exact codes in each of the other programs.
    pub other_exact: usize,
    pub other_programs: usize,
    /// `^(PFX).*` patterns in `P1`.
    pub prefix_patterns: usize,
    /// `^PFX[0-9]{2,4}$` patterns in `P1`.
    pub shaped_patterns: usize,
    /// Patterns with no literal anchor (`A{n}B`), which take the `RegexSet` fallback.
    pub unanchored_patterns: usize,
    pub partners: usize,
}

/// W3: 1,000,000 exact codes (950k in `P1`, 10k in each of `P2`..`P6`) and 10,020 regex codes
/// in `P1`.
pub const W3: Shape = Shape {
    main_exact: 950_000,
    other_exact: 10_000,
    other_programs: 5,
    prefix_patterns: 9_000,
    shaped_patterns: 1_000,
    unanchored_patterns: 20,
    partners: 2_000,
};

impl Shape {
    /// Build options that admit the shape: W3 keeps its 10,020 regex rows in one program (every
    /// recorded number was measured on it), which is over the default
    /// `codes.max_regex_rows_per_program` of 10,000 that came later; the workers under test get
    /// the same limit through [`Shape::worker_limit`].
    pub fn build_options(&self) -> BuildOptions {
        BuildOptions {
            max_regex_rows_per_program: self.regex_total(),
            ..BuildOptions::default()
        }
    }

    /// The `--set` that lets a worker load this shape's table.
    pub fn worker_limit(&self) -> String {
        format!("codes.max_regex_rows_per_program={}", self.regex_total())
    }

    pub fn exact_total(&self) -> usize {
        self.main_exact + self.other_exact * self.other_programs
    }

    pub fn regex_total(&self) -> usize {
        self.prefix_patterns + self.shaped_patterns + self.unanchored_patterns
    }
}

pub const MAIN_PROGRAM: &str = "P1";

/// A generated table, before it is handed to `CodeTable::build`.
pub struct Synthetic {
    pub entries: Vec<CodeEntry>,
    pub partners: Vec<Partner>,
    /// Positions in `entries` of the exact codes of `P1` (the entry id after the build).
    pub main_exact: Vec<u32>,
    /// Literal prefixes of the `^(PFX).*` patterns.
    pub prefixes: Vec<String>,
    /// Literal prefixes of the `^PFX[0-9]{2,4}$` patterns.
    pub shaped_prefixes: Vec<String>,
    /// Every regex pattern, in table order.
    pub regex_sources: Vec<String>,
}

pub fn partner_id(index: usize) -> String {
    format!("partner-{index:04}")
}

fn entry(
    interner: &mut Interner,
    rng: &mut Rng,
    program: &str,
    code: String,
    match_type: MatchType,
    partners: usize,
    line: usize,
) -> CodeEntry {
    let credit_policy = match rng.below(10) {
        0..=4 => CreditPolicy::Always,
        5..=7 => CreditPolicy::Involved,
        _ => CreditPolicy::Winner,
    };
    CodeEntry {
        program_id: interner.intern(program),
        code: code.into_boxed_str(),
        match_type,
        code_type: CodeType::Tracking,
        owner_partner_id: Some(interner.intern(&partner_id(rng.below(partners)))),
        credit_policy: Some(credit_policy),
        deal_id: None,
        start: None,
        end: None,
        timezone: Tz::UTC,
        state: CodeState::Active,
        usage_limit: None,
        customer_limit: None,
        priority: if match_type == MatchType::Regex {
            rng.below(4) as i32
        } else {
            0
        },
        source_line: line as u32 + 2,
    }
}

/// Packs a code of at most 16 bytes for the duplicate check, without keeping a second copy of
/// every string around.
fn packed(code: &str) -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..code.len()].copy_from_slice(code.as_bytes());
    u128::from_le_bytes(bytes)
}

fn distinct_prefixes(rng: &mut Rng, count: usize, seen: &mut HashSet<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let prefix = random_code(rng, 4, 8);
        if seen.insert(prefix.clone()) {
            out.push(prefix);
        }
    }
    out
}

impl Synthetic {
    pub fn generate(shape: &Shape, seed: u64) -> Synthetic {
        let mut rng = Rng::new(seed);
        // Shares program and partner ids between entries, as the CSV loader does.
        let mut interner = Interner::default();
        let mut entries = Vec::with_capacity(shape.exact_total() + shape.regex_total());
        let mut main_exact = Vec::with_capacity(shape.main_exact);
        let programs = std::iter::once((MAIN_PROGRAM.to_string(), shape.main_exact))
            .chain((0..shape.other_programs).map(|p| (format!("P{}", p + 2), shape.other_exact)));
        for (program, count) in programs {
            // Codes are unique per program; one set per program keeps the peak small.
            let mut seen = HashSet::with_capacity(count);
            let mut made = 0;
            while made < count {
                let code = random_code(&mut rng, 8, 12);
                if !seen.insert(packed(&code)) {
                    continue;
                }
                if program == MAIN_PROGRAM {
                    main_exact.push(entries.len() as u32);
                }
                let line = entries.len();
                entries.push(entry(
                    &mut interner,
                    &mut rng,
                    &program,
                    code,
                    MatchType::Exact,
                    shape.partners,
                    line,
                ));
                made += 1;
            }
        }
        let mut seen = HashSet::new();
        let prefixes = distinct_prefixes(&mut rng, shape.prefix_patterns, &mut seen);
        let shaped_prefixes = distinct_prefixes(&mut rng, shape.shaped_patterns, &mut seen);
        let mut regex_sources: Vec<String> = prefixes
            .iter()
            .map(|p| format!("^({p}).*"))
            .chain(shaped_prefixes.iter().map(|p| format!("^{p}[0-9]{{2,4}}$")))
            .collect();
        let mut unanchored = HashSet::new();
        let letters = &ALNUM[..26];
        while unanchored.len() < shape.unanchored_patterns {
            let a = letters[rng.below(26)] as char;
            let b = letters[rng.below(26)] as char;
            let n = rng.between(2, 5);
            let pattern = format!("{a}{{{n}}}{b}");
            if a != b && unanchored.insert(pattern.clone()) {
                regex_sources.push(pattern);
            }
        }
        for source in &regex_sources {
            let line = entries.len();
            entries.push(entry(
                &mut interner,
                &mut rng,
                MAIN_PROGRAM,
                source.clone(),
                MatchType::Regex,
                shape.partners,
                line,
            ));
        }
        let partners = (0..shape.partners)
            .map(|i| Partner::unlisted(&partner_id(i)))
            .collect();
        Synthetic {
            entries,
            partners,
            main_exact,
            prefixes,
            shaped_prefixes,
            regex_sources,
        }
    }
}

/// Resident set size of this process in bytes, from `/proc/self/status` (Linux only).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn rss_mb() -> f64 {
    rss_bytes().map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

/// Hands freed heap pages back to the kernel so that RSS deltas measure live data rather than
/// what the allocator kept from dropped temporaries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim only releases free memory and may be called at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
