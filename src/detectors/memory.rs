//! Detector state in process memory, for the offline mode and tests. Same semantics as the Redis
//! script (`redis_state.rs`), step for step; time-to-live is not modelled, since an offline run
//! is finite and the Redis TTLs only collect garbage well after a window closed.

use std::collections::{BTreeSet, HashMap};

use super::state::{DetectorState, EvidenceWhen, Op, OpResult, OrderStep, StateError, StepOutcome};

#[derive(Debug, Default)]
struct SortedSet {
    scores: HashMap<String, i64>,
    /// Redis order: by score, then by member bytes.
    order: BTreeSet<(i64, String)>,
}

impl SortedSet {
    fn set(&mut self, score: i64, member: &str) {
        if let Some(old) = self.scores.insert(member.to_string(), score) {
            self.order.remove(&(old, member.to_string()));
        }
        self.order.insert((score, member.to_string()));
    }

    fn count(&self, min: i64, max: i64) -> u64 {
        self.order
            .range((min, String::new())..(max, String::new()))
            .count() as u64
    }

    fn trim_below(&mut self, bound: i64) {
        let kept = self.order.split_off(&(bound, String::new()));
        for (_, member) in std::mem::replace(&mut self.order, kept) {
            self.scores.remove(&member);
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryState {
    sets: HashMap<String, SortedSet>,
    memos: HashMap<String, (String, Vec<OpResult>)>,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn run(&mut self, ops: &[Op]) -> Vec<OpResult> {
        let mut results: Vec<OpResult> = Vec::with_capacity(ops.len());
        for op in ops {
            let result = match op {
                Op::Add {
                    key,
                    members,
                    trim_below,
                    ranges,
                    evidence,
                    ..
                } => {
                    let set = self.sets.entry(key.clone()).or_default();
                    if let Some(bound) = trim_below {
                        set.trim_below(*bound);
                    }
                    let before = ranges.iter().map(|r| set.count(r.min, r.max)).collect();
                    for (score, member) in members {
                        set.set(*score, member);
                    }
                    let after: Vec<u64> = ranges.iter().map(|r| set.count(r.min, r.max)).collect();
                    let mut result = OpResult {
                        before,
                        after,
                        evidence: Vec::new(),
                    };
                    if let Some((range, when)) = evidence
                        && evidence_due(&results, &result, *when)
                        && let Some(r) = ranges.get(*range)
                    {
                        result.evidence = set
                            .order
                            .range((r.min, String::new())..(r.max, String::new()))
                            .take(super::state::EVIDENCE_LIMIT)
                            .map(|(_, m)| m.clone())
                            .collect();
                    }
                    result
                }
                Op::Tally {
                    key,
                    members,
                    top,
                    evidence,
                    ..
                } => {
                    let set = self.sets.entry(key.clone()).or_default();
                    for member in members {
                        let score = set.scores.get(member).copied().unwrap_or(0) + 1;
                        set.set(score, member);
                    }
                    let mut result = OpResult::default();
                    if let Some(when) = evidence
                        && evidence_due(&results, &result, *when)
                    {
                        // Redis ZREVRANGE: descending score, ties by descending member.
                        result.evidence = set
                            .order
                            .iter()
                            .rev()
                            .take(*top)
                            .flat_map(|(s, m)| [m.clone(), s.to_string()])
                            .collect();
                    }
                    result
                }
            };
            results.push(result);
        }
        results
    }
}

/// Whether the count named by `when` (in an earlier result, or in `current`) reached its minimum.
pub(super) fn evidence_due(earlier: &[OpResult], current: &OpResult, when: EvidenceWhen) -> bool {
    let source = earlier.get(when.op).unwrap_or(current);
    source.after.get(when.range).is_some_and(|&n| n >= when.min)
}

impl DetectorState for MemoryState {
    fn apply(&mut self, steps: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError> {
        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            if let Some((fingerprint, results)) = self.memos.get(&step.memo_key) {
                outcomes.push(if *fingerprint == step.fingerprint {
                    StepOutcome::Applied(results.clone())
                } else {
                    StepOutcome::Duplicate
                });
                continue;
            }
            let results = self.run(&step.ops);
            self.memos.insert(
                step.memo_key.clone(),
                (step.fingerprint.clone(), results.clone()),
            );
            outcomes.push(StepOutcome::Applied(results));
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::Range;
    use super::*;

    fn add(key: &str, members: &[(i64, &str)], ranges: &[(i64, i64)]) -> Op {
        Op::Add {
            key: key.into(),
            ttl_secs: 60,
            members: members.iter().map(|(s, m)| (*s, m.to_string())).collect(),
            trim_below: None,
            ranges: ranges
                .iter()
                .map(|&(min, max)| Range { min, max })
                .collect(),
            evidence: Some((
                0,
                EvidenceWhen {
                    op: 0,
                    range: 0,
                    min: 2,
                },
            )),
        }
    }

    fn step(order: &str, fingerprint: &str, ops: Vec<Op>) -> OrderStep {
        OrderStep {
            group: "p".into(),
            memo_key: format!("memo:{order}"),
            fingerprint: fingerprint.into(),
            memo_ttl_secs: 60,
            ops,
        }
    }

    #[test]
    fn counts_are_set_based_and_replays_return_the_first_results() {
        let mut state = MemoryState::new();
        let first = step("o1", "f1", vec![add("k", &[(10, "o1")], &[(0, 100)])]);
        let second = step("o2", "f2", vec![add("k", &[(20, "o2")], &[(0, 100)])]);
        let out = state
            .apply(&[first.clone(), second, first.clone()])
            .expect("memory never fails");
        let applied = |o: &StepOutcome| match o {
            StepOutcome::Applied(r) => r[0].clone(),
            StepOutcome::Duplicate => panic!("not a duplicate"),
        };
        assert_eq!(applied(&out[0]).after, [1]);
        assert!(applied(&out[0]).evidence.is_empty());
        assert_eq!(applied(&out[1]).before, [1]);
        assert_eq!(applied(&out[1]).evidence, ["o1", "o2"]);
        assert_eq!(
            out[2], out[0],
            "a replay sees what the first application saw"
        );
        let changed = step("o1", "other", vec![add("k", &[(30, "o1")], &[(0, 100)])]);
        assert_eq!(
            state.apply(&[changed]).expect("memory"),
            [StepOutcome::Duplicate]
        );
    }

    #[test]
    fn ranges_exclude_their_upper_bound_and_trimming_drops_old_members() {
        let mut state = MemoryState::new();
        let mut op = add("k", &[(5, "a"), (10, "b"), (15, "c")], &[(5, 15), (0, 100)]);
        let out = state.run(std::slice::from_ref(&op));
        assert_eq!(out[0].after, [2, 3]);
        if let Op::Add {
            members,
            trim_below,
            ..
        } = &mut op
        {
            *members = vec![(20, "d".into())];
            *trim_below = Some(10);
        }
        let out = state.run(&[op]);
        assert_eq!(out[0].before, [1, 2], "a was trimmed first");
        assert_eq!(out[0].after, [1, 3]);
    }

    #[test]
    fn tallies_rank_like_zrevrange() {
        let mut state = MemoryState::new();
        let tally = |members: &[&str], min: u64| Op::Tally {
            key: "t".into(),
            ttl_secs: 60,
            members: members.iter().map(|m| m.to_string()).collect(),
            top: 2,
            evidence: Some(EvidenceWhen {
                op: 0,
                range: 0,
                min,
            }),
        };
        let out = state.run(&[tally(&["A", "B", "C"], 0)]);
        assert!(
            out[0].evidence.is_empty(),
            "a tally has no count of its own"
        );
        let always = add("x", &[(1, "x")], &[(0, 10)]);
        let out = state.run(&[always, tally(&["B"], 1)]);
        assert_eq!(out[1].evidence, ["B", "2", "C", "1"]);
    }
}
