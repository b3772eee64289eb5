//! W3 of `performance.md`: matching against 1,000,000 exact codes and 10,020 regex codes.
//!
//! Run with `cargo bench --bench matcher`. Before criterion starts, the bench builds the table
//! once and prints its build time and resident memory (criterion measures neither).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

// The allocator the worker binary uses, so the table is laid out the same way.
#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use promo_attribution::codes::{CodeTable, MatchType};
use promo_attribution::matcher::{DEFAULT_REGEX_SIZE_LIMIT, ProgramMatcher, RegexIndex};
use regex::RegexSetBuilder;

use support::{
    ALNUM, DIGITS, MAIN_PROGRAM, Rng, Synthetic, W3, random_case, random_code, random_from,
    release_free_memory, rss_mb,
};

/// Probes per timed iteration: enough to spread over the table, few enough to stay cache-warm
/// themselves (the lookups, not the probe strings, should miss the cache).
const PROBES: usize = 4096;
const SEED: u64 = 0x5EED_0003;
/// Probes per iteration of `cold_lookup`: 64× more distinct codes, so the table slots and rows
/// they touch no longer stay in the CPU caches between iterations, as they largely do with 4096.
const COLD_PROBES: usize = 262_144;

fn build(synthetic: Synthetic) -> CodeTable {
    CodeTable::build(
        synthetic.entries,
        synthetic.partners,
        "bench",
        "synthetic",
        W3.build_options(),
    )
    .expect("the synthetic table is valid")
}

/// An entered code that a regex pattern matches: 90% a `^(PFX).*` prefix plus 2-6 characters,
/// 10% a `^PFX[0-9]{2,4}$` prefix plus 2-4 digits.
fn regex_hit_probe(rng: &mut Rng, prefixes: &[String], shaped: &[String]) -> String {
    if rng.percent(90) {
        let prefix = &prefixes[rng.below(prefixes.len())];
        let len = rng.between(2, 6);
        format!("{prefix}{}", random_from(rng, ALNUM, len))
    } else {
        let prefix = &shaped[rng.below(shaped.len())];
        let len = rng.between(2, 4);
        format!("{prefix}{}", random_from(rng, DIGITS, len))
    }
}

/// One way of running the naive `RegexSet`; see the comment where they are listed.
struct SetVariant<'p> {
    name: &'static str,
    patterns: &'p [String],
    /// Lazy-DFA cache size; `None` keeps the regex crate's default.
    dfa_limit: Option<usize>,
    /// Repeat the first N `regex_lookup/hit` probes; `None` draws a fresh probe per search.
    repeated: Option<usize>,
}

struct Probes {
    exact_hits: Vec<String>,
    exact_misses: Vec<String>,
    regex_hits: Vec<String>,
    regex_misses: Vec<String>,
}

/// Generates probes and checks each against the table, so every "hit" really hits the path it
/// is meant to and every "miss" really misses.
fn make_probes(
    table: &CodeTable,
    main_exact: &[u32],
    prefixes: &[String],
    shaped: &[String],
    count: usize,
    seed: u64,
) -> Probes {
    let mut rng = Rng::new(seed);
    let program = table.program(MAIN_PROGRAM).expect("P1 exists");
    let mut scratch = Vec::new();
    let mut lookup = |code: &str| table.lookup(program, code, &mut scratch);

    let exact_hits = (0..count)
        .map(|_| {
            let id = main_exact[rng.below(main_exact.len())];
            let probe = random_case(&mut rng, &table.entry(id).code);
            assert_eq!(lookup(&probe).map(|m| m.entry), Some(id), "{probe}");
            probe
        })
        .collect();
    let mut exact_misses = Vec::with_capacity(count);
    while exact_misses.len() < count {
        let code = random_code(&mut rng, 8, 12);
        let probe = random_case(&mut rng, &code);
        if lookup(&probe).is_none() {
            exact_misses.push(probe);
        }
    }
    let mut regex_hits = Vec::with_capacity(count);
    while regex_hits.len() < count {
        let probe = regex_hit_probe(&mut rng, prefixes, shaped);
        let hit = lookup(&probe).map(|m| table.entry(m.entry).match_type);
        if hit == Some(MatchType::Regex) {
            regex_hits.push(probe);
        }
    }
    // Near misses that reach the regex index: a prefix with its last character changed, or a
    // shaped prefix with too many digits (a candidate whose regex runs and fails).
    let mut regex_misses = Vec::with_capacity(count);
    while regex_misses.len() < count {
        let probe = if rng.percent(90) {
            let prefix = &prefixes[rng.below(prefixes.len())];
            let mut altered = prefix[..prefix.len() - 1].to_string();
            altered.push(ALNUM[rng.below(ALNUM.len())] as char);
            let len = rng.between(2, 6);
            format!("{altered}{}", random_from(&mut rng, ALNUM, len))
        } else {
            let prefix = &shaped[rng.below(shaped.len())];
            let len = rng.between(5, 6);
            format!("{prefix}{}", random_from(&mut rng, DIGITS, len))
        };
        if lookup(&probe).is_none() {
            regex_misses.push(probe);
        }
    }
    Probes {
        exact_hits,
        exact_misses,
        regex_hits,
        regex_misses,
    }
}

/// A group of `CodeTable::lookup` benches over hit and miss probe sets; the caller adds the
/// index-only variants and finishes it.
fn lookup_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    table: &CodeTable,
    program: &ProgramMatcher,
    sets: [(&str, &Vec<String>); 2],
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(40)
        .throughput(Throughput::Elements(PROBES as u64));
    let mut scratch = Vec::new();
    for (name, set) in sets {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut found = 0u32;
                for probe in set {
                    found += table
                        .lookup(program, black_box(probe), &mut scratch)
                        .is_some() as u32;
                }
                found
            })
        });
    }
    group
}

fn matcher(c: &mut Criterion) {
    // --- One build, outside criterion: build time and resident memory. ---
    release_free_memory();
    let rss_start = rss_mb();
    let synthetic = Synthetic::generate(&W3, SEED);
    let main_exact = synthetic.main_exact.clone();
    let prefixes = synthetic.prefixes.clone();
    let shaped = synthetic.shaped_prefixes.clone();
    let regex_sources = synthetic.regex_sources.clone();
    let entry_count = synthetic.entries.len();
    release_free_memory();
    let rss_before_build = rss_mb();
    let started = Instant::now();
    let table = build(synthetic);
    let build_time = started.elapsed();
    release_free_memory();
    let rss_after_build = rss_mb();
    eprintln!(
        "table_entries={entry_count} (exact={} regex={})",
        W3.exact_total(),
        W3.regex_total()
    );
    eprintln!("table_build_once_ms={:.0}", build_time.as_secs_f64() * 1e3);
    eprintln!(
        "table_rss_mb={:.1} (RSS growth across CodeTable::build: indexes, code ids, table overhead)",
        rss_after_build - rss_before_build
    );
    eprintln!(
        "table_total_rss_mb={:.1} (RSS growth from before generating the entries: the table including the CodeEntry rows it owns)",
        rss_after_build - rss_start
    );
    eprintln!("process_rss_mb={rss_after_build:.1}");

    let probes = make_probes(
        &table,
        &main_exact,
        &prefixes,
        &shaped,
        PROBES,
        SEED ^ 0xABCD,
    );
    let program = table.program(MAIN_PROGRAM).expect("P1 exists");
    let mut scratch = Vec::new();

    // --- Lookups through the public entry point. ---
    let mut group = lookup_group(
        c,
        "exact_lookup",
        &table,
        program,
        [("hit", &probes.exact_hits), ("miss", &probes.exact_misses)],
    );
    // The exact index alone, without the regex probes every `lookup` also makes.
    group.bench_function("index_only_hit", |b| {
        b.iter(|| {
            let mut found = 0u32;
            for probe in &probes.exact_hits {
                found += program.exact.get(black_box(probe)).is_some() as u32;
            }
            found
        })
    });
    group.finish();

    let mut group = lookup_group(
        c,
        "regex_lookup",
        &table,
        program,
        [("hit", &probes.regex_hits), ("miss", &probes.regex_misses)],
    );
    // The regex index alone, and the same index without the 20 unanchored patterns, to show
    // what the `RegexSet` fallback costs every lookup.
    group.bench_function("index_only_hit", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for probe in &probes.regex_hits {
                scratch.clear();
                program.regex.matches_into(black_box(probe), &mut scratch);
                found += scratch.len();
            }
            found
        })
    });
    let mut anchored_only = RegexIndex::new(DEFAULT_REGEX_SIZE_LIMIT);
    for (i, source) in regex_sources
        .iter()
        .take(W3.prefix_patterns + W3.shaped_patterns)
        .enumerate()
    {
        anchored_only
            .add(source, i as u32)
            .expect("pattern compiles");
    }
    anchored_only.finish().expect("index finishes");
    group.bench_function("index_only_hit_without_unanchored", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for probe in &probes.regex_hits {
                scratch.clear();
                anchored_only.matches_into(black_box(probe), &mut scratch);
                found += scratch.len();
            }
            found
        })
    });
    group.finish();
    drop(anchored_only);

    // --- The same lookups over 262,144 distinct probes: closer to a stream of new orders. ---
    let cold = make_probes(
        &table,
        &main_exact,
        &prefixes,
        &shaped,
        COLD_PROBES,
        SEED ^ 0xC01D,
    );
    let mut group = c.benchmark_group("cold_lookup");
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .throughput(Throughput::Elements(COLD_PROBES as u64));
    for (name, set) in [
        ("exact_hit", &cold.exact_hits),
        ("exact_miss", &cold.exact_misses),
        ("regex_hit", &cold.regex_hits),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut found = 0u32;
                for probe in set {
                    found += table
                        .lookup(program, black_box(probe), &mut scratch)
                        .is_some() as u32;
                }
                found
            })
        });
    }
    group.bench_function("exact_index_only_hit", |b| {
        b.iter(|| {
            let mut found = 0u32;
            for probe in &cold.exact_hits {
                found += program.exact.get(black_box(probe)).is_some() as u32;
            }
            found
        })
    });
    group.finish();
    drop(cold);

    // --- The naive approach: one RegexSet of the same patterns. ---
    // The default 10 MB compiled-size limit refuses 10k patterns, so every variant raises it.
    // A lazy DFA caches the states it meets, so a set that is fed the same 4096 probes over and
    // over ends up far faster than on codes it has not seen; real entered codes are new each
    // time. Hence the `novel` variants draw a fresh probe for every search (same distribution
    // as `regex_lookup/hit`) and time only the `matches` call.
    //   default_cache                 10,020 patterns, default 2 MB lazy-DFA cache (it thrashes and
    //                                 falls back to the PikeVM, so repeating probes does not matter)
    //   large_cache_novel             10,020 patterns, 256 MB cache, fresh probes: the ratio's baseline
    //   large_cache_repeated_probes   the same set on the 4096 regex_lookup/hit probes, repeated
    //   anchored_only_large_cache_novel  without the 20 unanchored patterns: the best case for a set
    let all_patterns = &regex_sources[..];
    let anchored_patterns = &regex_sources[..W3.prefix_patterns + W3.shaped_patterns];
    let variant = |name, patterns, dfa_limit, repeated| SetVariant {
        name,
        patterns,
        dfa_limit,
        repeated,
    };
    let large = Some(256usize << 20);
    let variants = [
        variant("default_cache", all_patterns, None, Some(256)),
        variant("large_cache_novel", all_patterns, large, None),
        variant(
            "large_cache_repeated_probes",
            all_patterns,
            large,
            Some(PROBES),
        ),
        variant(
            "anchored_only_large_cache_novel",
            anchored_patterns,
            large,
            None,
        ),
    ];
    for SetVariant {
        name,
        patterns,
        dfa_limit,
        repeated,
    } in variants
    {
        release_free_memory();
        let rss_before_set = rss_mb();
        let started = Instant::now();
        let mut builder = RegexSetBuilder::new(patterns);
        builder.size_limit(1 << 30);
        if let Some(limit) = dfa_limit {
            builder.dfa_size_limit(limit);
        }
        let set = builder.build().expect("the patterns compile as a set");
        eprintln!(
            "regexset_{name}_patterns={} regexset_{name}_build_ms={:.0} regexset_{name}_rss_mb={:.1}",
            patterns.len(),
            started.elapsed().as_secs_f64() * 1e3,
            rss_mb() - rss_before_set,
        );
        let mut group = c.benchmark_group("regexset_baseline");
        group
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(8))
            .sample_size(10);
        match repeated {
            Some(count) => {
                let set_probes = &probes.regex_hits[..count];
                let matched: usize = set_probes
                    .iter()
                    .map(|p| set.matches(p).matched_any() as usize)
                    .sum();
                assert_eq!(matched, count, "every regex-hit probe matches the set");
                group.throughput(Throughput::Elements(count as u64));
                group.bench_function(name, |b| {
                    b.iter(|| {
                        let mut found = 0usize;
                        for probe in set_probes {
                            found += set.matches(black_box(probe)).matched_any() as usize;
                        }
                        found
                    })
                });
            }
            None => {
                let mut rng = Rng::new(SEED ^ 0x0E11);
                group.throughput(Throughput::Elements(1));
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let probe = regex_hit_probe(&mut rng, &prefixes, &shaped);
                            let started = Instant::now();
                            let matches = set.matches(black_box(&probe));
                            total += started.elapsed();
                            assert!(matches.matched_any(), "{probe}");
                        }
                        total
                    })
                });
            }
        }
        group.finish();
        eprintln!(
            "regexset_{name}_rss_after_searches_mb={:.1}",
            rss_mb() - rss_before_set
        );
    }

    // --- Whole-table build. The first table is dropped so only one extra copy is alive. ---
    let entries = table.built_entries().to_vec();
    let partners: Vec<_> = table.partners().cloned().collect();
    drop(probes);
    drop(table);
    let mut group = c.benchmark_group("table_build");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(entry_count as u64));
    group.bench_function("1M_exact_10k_regex", |b| {
        b.iter_batched(
            || (entries.clone(), partners.clone()),
            |(entries, partners)| {
                CodeTable::build(entries, partners, "bench", "synthetic", W3.build_options())
                    .expect("the synthetic table is valid")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
