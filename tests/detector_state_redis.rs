//! The Redis detector state against the in-memory one, operation by operation, on random steps
//! that reach every branch of the script (members already present, trims, merges, every gate,
//! evidence, tallies, replays, duplicates); replay records written by the previous script
//! (results as `cjson` wrote them) still read as the results they recorded; and a customer HMAC
//! key rotation with the previous key keeps per-customer counts (without it they restart).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use promo_attribution::detectors::state::{CountRef, Evidence, Gate, Op, OpResult, Range};
use promo_attribution::detectors::{DetectorState, MemoryState, OrderStep, StepOutcome};
use promo_attribution::redis::detector_state::RedisState;
use support::Rng;
use support::redis::{connect, delete_prefix, shared};

fn redis_state(url: &str) -> RedisState {
    RedisState::new(url, Duration::from_secs(5), Duration::from_secs(10)).expect("redis url")
}

fn range(rng: &mut Rng) -> Range {
    let min = if rng.percent(15) {
        i64::MIN
    } else {
        rng.below(60) as i64
    };
    let max = if rng.percent(15) {
        i64::MAX
    } else {
        min.max(0) + rng.below(60) as i64
    };
    Range { min, max }
}

/// A count an operation's gate may read: usually an earlier or the current operation's range,
/// sometimes one that does not exist (which reads as 0).
fn count_ref(rng: &mut Rng, current: usize) -> CountRef {
    CountRef {
        op: if rng.percent(70) {
            current
        } else {
            rng.below(current + 2)
        },
        range: rng.below(3),
    }
}

fn gate(rng: &mut Rng, current: usize) -> Gate {
    let small = |rng: &mut Rng| rng.below(4) as u64;
    match rng.below(4) {
        0 => Gate::Excess {
            count: count_ref(rng, current),
            limit: small(rng),
        },
        1 => Gate::Share {
            part: count_ref(rng, current),
            total: count_ref(rng, current),
            min_total: small(rng),
            percent: rng.below(100) as u64,
        },
        2 => Gate::Spike {
            uses: count_ref(rng, current),
            base: count_ref(rng, current),
            buckets: 1 + small(rng),
            factor: small(rng),
            floor: small(rng),
        },
        _ => Gate::Either {
            distinct: count_ref(rng, current),
            unknown: count_ref(rng, current),
            min_distinct: 1 + small(rng),
            min_unknown: 1 + small(rng),
        },
    }
}

fn op(rng: &mut Rng, prefix: &str, current: usize) -> Op {
    if rng.percent(25) {
        return Op::Tally {
            key: format!("{prefix}t{}", rng.below(2)),
            ttl_secs: 600,
            members: (0..rng.below(3))
                .map(|_| format!("m{}", rng.below(6)))
                .collect(),
            // At least 1: the plans ask for 5, and with 0 the script's ZREVRANGE 0 -1 would
            // return every member (the previous script did too) where memory returns none.
            top: 1 + rng.below(3),
            evidence: rng.percent(80).then(|| gate(rng, current)),
        };
    }
    // Now and then more ranges than one bitmask argument holds.
    let count = if rng.percent(3) { 55 } else { rng.below(4) };
    let ranges: Vec<Range> = (0..count).map(|_| range(rng)).collect();
    Op::Add {
        key: format!("{prefix}s{}", rng.below(3)),
        // Now and then merging another set first, as during a customer key rotation.
        merge_from: rng
            .percent(15)
            .then(|| format!("{prefix}s{}", rng.below(3))),
        ttl_secs: 600,
        members: (0..rng.below(4))
            .map(|_| (rng.below(60) as i64, format!("o{}", rng.below(1000))))
            .collect(),
        trim_below: rng.percent(10).then(|| rng.below(20) as i64),
        ranges,
        evidence: rng.percent(80).then(|| Evidence {
            ranges: (0..rng.below(3)).map(|_| range(rng)).collect(),
            gate: gate(rng, current),
        }),
    }
}

/// A step of program `g0` or `g1`, each with its own keys (Redis applies a batch program by
/// program, so programs must not share keys, as in the plans), tagged with the program as the
/// plans tag theirs (on a cluster, `g0` and `g1` live on different primaries).
fn step(rng: &mut Rng, prefix: &str, order: usize) -> OrderStep {
    let group = format!("g{}", rng.below(2));
    let prefix = &format!("{prefix}{{{group}}}:");
    let ops = (0..rng.below(5)).fold(Vec::new(), |mut ops, i| {
        ops.push(op(rng, prefix, i));
        ops
    });
    OrderStep {
        group,
        memo_key: format!("{prefix}o:{order}"),
        fingerprint: format!("f{}", rng.below(3)),
        memo_ttl_secs: 600,
        ops,
    }
}

#[test]
fn redis_and_memory_agree_on_random_steps() {
    let (url, prefix) = shared("detector-state-random");
    agree_on_random_steps(redis_state(&url), &prefix);
    delete_prefix(&url, &prefix);
}

/// The same on the cluster: every call of the script touches one slot (a CROSSSLOT error would
/// fail it), and the calls pipelined per primary come back in order. Keys expire in minutes.
#[test]
fn redis_and_memory_agree_on_random_steps_on_the_cluster() {
    let _cluster = support::cluster_lock(false);
    let url = support::redis_cluster_url();
    let prefix = support::unique_prefix("detector-state-cluster");
    let settings = support::store::store_settings(url, &prefix);
    agree_on_random_steps(
        RedisState::from_settings(&settings).expect("cluster settings"),
        &prefix,
    );
}

fn agree_on_random_steps(mut redis: RedisState, prefix: &str) {
    let prefix = prefix.to_string();
    let mut memory = MemoryState::new();
    // A seed whose steps fire gates often enough (the count below); merges made the previous
    // one fire too rarely.
    let mut rng = Rng::new(5);
    let mut fired = 0;
    for _ in 0..30 {
        // Orders repeat across batches (replays and duplicates) and within one.
        let batch: Vec<OrderStep> = (0..rng.between(1, 400))
            .map(|_| {
                let order = rng.below(600);
                step(&mut rng, &prefix, order)
            })
            .collect();
        let expected = memory.apply(&batch).expect("memory");
        let actual = redis.apply(&batch).expect("redis");
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_eq!(a, e, "step {i}: {:?}", batch[i]);
        }
        fired += expected
            .iter()
            .filter(|o| {
                matches!(o, StepOutcome::Applied(r) if r.iter().any(|r| !r.evidence.is_empty()))
            })
            .count();
    }
    assert!(fired >= 20, "gates fired only {fired} times");
}

#[test]
fn replay_records_of_the_previous_script_still_read() {
    let (url, prefix) = shared("detector-state-old-records");
    let mut connection = connect(&url);
    // As the previous script's cjson wrote them: empty lists as `{}`, keys in any order.
    let old = [
        r#"[{"e":{},"a":[3,1],"b":[2,0]},{"b":{},"a":{},"e":[["B","2","C","1"]]}]"#,
        r#"{}"#,
        r#"[{"b":[0],"e":[["o1","o\/2"],{}],"a":[1]}]"#,
    ];
    let expected = [
        vec![
            OpResult {
                before: vec![2, 0],
                after: vec![3, 1],
                evidence: vec![],
            },
            OpResult {
                before: vec![],
                after: vec![],
                evidence: vec![vec!["B".into(), "2".into(), "C".into(), "1".into()]],
            },
        ],
        vec![],
        vec![OpResult {
            before: vec![0],
            after: vec![1],
            evidence: vec![vec!["o1".into(), "o/2".into()], vec![]],
        }],
    ];
    let steps: Vec<OrderStep> = (0..old.len())
        .map(|i| OrderStep {
            group: "g".into(),
            memo_key: format!("{prefix}o:{i}"),
            fingerprint: "fp".into(),
            memo_ttl_secs: 600,
            ops: vec![Op::Add {
                key: format!("{prefix}s"),
                merge_from: None,
                ttl_secs: 600,
                members: vec![(1, format!("x{i}"))],
                trim_below: None,
                ranges: vec![Range {
                    min: i64::MIN,
                    max: i64::MAX,
                }],
                evidence: None,
            }],
        })
        .collect();
    for (step, record) in steps.iter().zip(old) {
        ::redis::cmd("SET")
            .arg(&step.memo_key)
            .arg(format!("fp\n{record}"))
            .arg("EX")
            .arg(600)
            .query::<()>(&mut connection)
            .expect("SET");
    }
    let mut redis = redis_state(&url);
    let outcomes = redis.apply(&steps).expect("redis");
    let want: Vec<StepOutcome> = expected.into_iter().map(StepOutcome::Applied).collect();
    assert_eq!(outcomes, want, "old records replay as recorded");
    let mut other = steps[0].clone();
    other.fingerprint = "another".into();
    assert_eq!(
        redis.apply(&[other]).expect("redis"),
        [StepOutcome::Duplicate]
    );
    let card: u64 = ::redis::cmd("ZCARD")
        .arg(format!("{prefix}s"))
        .query(&mut connection)
        .expect("ZCARD");
    assert_eq!(card, 0, "a replay changes nothing");
    delete_prefix(&url, &prefix);
}

// ---------------------------------------------------------------------------------------------
// Customer HMAC key rotation

const ROTATION_CODES: &str = "\
Promo Code,Program Id,Media Id,Type,Credit Rule,Usage Limit,Customer Limit
TWICE,1,100,TRACKING,ALWAYS,,2
";

/// A worker's engine over the Redis state at `prefix`, with `key` (id `key_id`) and, during a
/// rotation, the previous key.
struct Rotating {
    engine: promo_attribution::engine::Engine,
    state: RedisState,
    table: promo_attribution::codes::CodeTable,
}

impl Rotating {
    fn new(url: &str, prefix: &str, key: (&str, &str), previous: Option<(&str, &str)>) -> Rotating {
        use promo_attribution::codes::load::{read_codes_lenient, read_partners};
        let (entries, problems) = read_codes_lenient(ROTATION_CODES.as_bytes(), "codes");
        assert!(problems.is_empty(), "{problems:?}");
        let partners = read_partners(&b"Partner Id,Status,Identity Hashes\n"[..], "partners")
            .expect("partners");
        let table = promo_attribution::codes::CodeTable::build(
            entries,
            partners,
            "v1",
            "codes",
            promo_attribution::codes::table::BuildOptions::default(),
        )
        .expect("table");
        let mut settings = promo_attribution::settings::Settings::default();
        settings.store.key_prefix = prefix.to_string();
        let detectors = &mut settings.detectors;
        detectors.enabled = true;
        detectors.customer_hmac_key = key.1.into();
        detectors.customer_hmac_key_id = key.0.into();
        if let Some((id, previous)) = previous {
            detectors.customer_hmac_previous_key = previous.into();
            detectors.customer_hmac_previous_key_id = id.into();
        }
        settings.check().expect("valid settings");
        Rotating {
            engine: promo_attribution::engine::Engine::new(std::sync::Arc::new(settings)),
            state: redis_state(url),
            table,
        }
    }

    /// Decides one order of alice with TWICE; the CUSTOMER_LIMIT_EXCEEDED alert it raises, if
    /// any, and the conversion's bytes.
    fn order(&mut self, id: &str, minute: i64) -> (Option<serde_json::Value>, Vec<u8>) {
        let at = chrono::DateTime::from_timestamp(1_779_998_400 + minute * 60, 0).expect("time");
        let record = serde_json::json!({
            "order_id": id,
            "program_id": "1",
            "event_type": "sale",
            "event_time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "promo_codes": ["TWICE"],
            "customer": {"id": "alice-42"},
        });
        let bytes = serde_json::to_vec(&record).expect("json");
        let mut outputs = promo_attribution::engine::Outputs::default();
        self.engine
            .run(&self.table, Some(&mut self.state), &[&bytes], &mut outputs)
            .expect("redis state");
        let outcome = outputs.iter().next().expect("one outcome");
        let writes: Vec<Vec<u8>> = outcome.writes().map(|w| w.value.to_vec()).collect();
        let alert = writes[1..]
            .iter()
            .map(|w| serde_json::from_slice::<serde_json::Value>(w).expect("json"))
            .find(|a| a["kind"] == "CUSTOMER_LIMIT_EXCEEDED");
        (alert, writes.concat())
    }
}

const OLD_KEY: (&str, &str) = ("2025-a", "old-customer-key-0123456789");
const NEW_KEY: (&str, &str) = ("2026-b", "new-customer-key-9876543210");

#[test]
fn a_customer_key_rotation_with_the_previous_key_keeps_per_customer_counts() {
    let (url, prefix) = shared("hmac-rotation");
    let mut before = Rotating::new(&url, &prefix, OLD_KEY, None);
    assert!(before.order("a", 0).0.is_none());
    assert!(before.order("b", 1).0.is_none(), "two uses: at the limit");

    // Rotated: the new key, the old one as previous. Alice's third use is past her limit.
    let mut after = Rotating::new(&url, &prefix, NEW_KEY, Some(OLD_KEY));
    let (alert, first) = after.order("c", 2);
    let alert = alert.expect("the third use exceeds the customer limit of 2");
    assert_eq!(alert["detail"]["uses"], 3, "{alert}");
    assert_eq!(alert["order_ids"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(alert["detail"]["key_id"], NEW_KEY.0, "{alert}");
    // A replay after the rotation gives the same outputs.
    assert_eq!(after.order("c", 2).1, first, "replayed byte for byte");

    // A worker not yet rotated (a rolling deploy) still counts under the old key; the rotated
    // one takes those uses in too, each once.
    assert!(before.order("d", 3).0.is_some(), "old key: a, b, d");
    assert!(
        after.order("e", 4).0.is_none(),
        "5 uses: an excess of 3 writes nothing"
    );
    let (alert, _) = after.order("f", 5);
    let alert = alert.expect("6 uses: an excess of 4, the next power of two");
    assert_eq!(alert["detail"]["uses"], 6, "{alert}");
    // A merge replaces the set; every key must keep a time to live, or it would never expire.
    let mut redis = connect(&url);
    let sets: Vec<String> =
        redis::Commands::scan_match::<_, String>(&mut redis, format!("{prefix}*"))
            .expect("scan")
            .filter_map(Result::ok)
            .collect();
    let limits = sets.iter().filter(|k| k.contains(":c:LI:TWICE:")).count();
    assert_eq!(limits, 2, "alice's limit set under each key: {sets:?}");
    for set in sets {
        let ttl: i64 = redis::Commands::ttl(&mut redis, &set).expect("ttl");
        assert!(ttl > 0, "{set} has no time to live ({ttl})");
    }
    delete_prefix(&url, &prefix);
}

#[test]
fn a_customer_key_rotation_without_the_previous_key_restarts_the_counts() {
    // What the previous key is for: without it the new pseudonyms start from nothing.
    let (url, prefix) = shared("hmac-rotation-reset");
    let mut before = Rotating::new(&url, &prefix, OLD_KEY, None);
    before.order("a", 0);
    before.order("b", 1);
    let mut after = Rotating::new(&url, &prefix, NEW_KEY, None);
    assert!(after.order("c", 2).0.is_none(), "one use under the new key");
    delete_prefix(&url, &prefix);
}
