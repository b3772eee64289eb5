//! The decision store's Redis script against the in-memory store, operation by operation, on
//! random batches of every operation (summaries, adjustment logs, HIGH_REVERSAL_RATE's credits
//! and reversals) with repeats, replays, orders whose summary is missing, odd order ids and
//! counts that would overflow: the replies must be equal, so the stream and the offline mode
//! count and alert alike.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use promo_attribution::detectors::kinds::reversal_rate::RateCounter;
use promo_attribution::detectors::{DetectorState, MemoryState};
use promo_attribution::redis::detector_state::RedisState;
use promo_attribution::reversals::store::{DecisionOp, DecisionReply};
use support::Rng;
use support::redis::{delete_prefix, shared};

fn counter(rng: &mut Rng, prefix: &str) -> RateCounter {
    let fields = ["f0", "f1", "f2"];
    let count = rng.between(1, 3);
    RateCounter {
        key: format!("{prefix}rr:{}", rng.below(2)),
        ttl_secs: 600,
        fields: fields[..count].iter().map(|f| f.to_string()).collect(),
        // Now and then an amount that overflows a count once added: the count stays as it was.
        units: if rng.percent(3) {
            i64::MAX as u64 - rng.below(10) as u64
        } else {
            rng.below(100_000) as u64
        },
    }
}

fn op(rng: &mut Rng, prefix: &str, group: &str) -> DecisionOp {
    let group = group.to_string();
    let order = rng.below(40);
    let key = format!("{prefix}v:{order}");
    let summary = format!("summary-{order}-{}", rng.below(2));
    match rng.below(4) {
        0 => DecisionOp::Record {
            group,
            key,
            summary,
            ttl_secs: 600,
        },
        1 => DecisionOp::Adjust {
            group,
            key,
            adjustment_id: format!("a{}", rng.below(3)),
            request: format!("request-{}", rng.below(1000)),
        },
        2 => DecisionOp::Credit {
            group,
            key,
            summary,
            counter: counter(rng, prefix),
        },
        _ => DecisionOp::Reverse {
            group,
            key,
            adjustment_id: format!("a{}", rng.below(3)),
            // Ids the script must escape in its JSON: quotes, slashes, backslashes, non-ASCII.
            order_id: format!("o\"/\\é-{order}"),
            counter: counter(rng, prefix),
        },
    }
}

#[test]
fn redis_and_memory_agree_on_random_decision_ops() {
    let (url, prefix) = shared("decision-store-random");
    let redis =
        RedisState::new(&url, Duration::from_secs(5), Duration::from_secs(10)).expect("redis url");
    agree_on_random_ops(redis, &prefix);
    delete_prefix(&url, &prefix);
}

/// The same on the cluster: the decision store's calls are routed to the primary of their
/// program's slot (they went to the first seed before, and failed with MOVED on any other).
/// Keys expire in minutes.
#[test]
fn redis_and_memory_agree_on_random_decision_ops_on_the_cluster() {
    let _cluster = support::cluster_lock(false);
    let url = support::redis_cluster_url();
    let prefix = support::unique_prefix("decision-store-cluster");
    let settings = support::store::store_settings(url, &prefix);
    agree_on_random_ops(
        RedisState::from_settings(&settings).expect("cluster settings"),
        &prefix,
    );
}

fn agree_on_random_ops(mut redis: RedisState, prefix: &str) {
    // Two programs, whose slots are on different primaries of the test cluster's three (hash
    // tags "g" and "h"), so a batch's calls go to two nodes.
    let mut memory = MemoryState::new();
    let mut rng = Rng::new(17);
    let (mut rates, mut evidence) = (0, 0);
    for _ in 0..25 {
        let batch: Vec<DecisionOp> = (0..rng.between(1, 300))
            .map(|_| {
                let group = if rng.percent(50) { "g" } else { "h" };
                op(&mut rng, &format!("{prefix}{{{group}}}:"), group)
            })
            .collect();
        let expected = memory.apply_decisions(&batch).expect("memory");
        let actual = redis.apply_decisions(&batch).expect("redis");
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_eq!(a, e, "op {i}: {:?}", batch[i]);
        }
        for reply in &expected {
            if let DecisionReply::Rates(counts) = reply
                && !counts.is_empty()
            {
                rates += 1;
                evidence += usize::from(counts.iter().any(|c| c.evidence.len() > 1));
            }
        }
        // A replay of the batch answers as the first time for every reversal that was counted
        // (one of an order without a summary yet may find the summary the batch recorded).
        let again = redis.apply_decisions(&batch).expect("redis replay");
        for (i, (a, e)) in again.iter().zip(&actual).enumerate() {
            if matches!(e, DecisionReply::Rates(counts) if !counts.is_empty()) {
                assert_eq!(a, e, "replayed op {i}");
            }
        }
        memory.apply_decisions(&batch).expect("memory replay");
    }
    assert!(
        rates >= 50 && evidence >= 20,
        "too few counted reversals ({rates}, {evidence} with evidence) to mean much"
    );
}
