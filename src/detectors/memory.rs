//! Detector state in process memory, for the offline mode and tests. Same semantics as the Redis
//! script (`src/redis/detector_state.rs`), step for step; time-to-live is not modelled, since an offline run
//! is finite and the Redis TTLs only collect garbage well after a window closed.

use std::collections::{BTreeSet, HashMap};

use crate::reversals::store::{DecisionOp, DecisionReply, DecisionStore, MemoryDecisions};

use super::state::{
    DetectorState, EVIDENCE_LIMIT, Op, OpResult, OrderStep, StateError, StepOutcome,
};

#[derive(Debug, Default)]
struct SortedSet {
    scores: HashMap<String, i64>,
    /// Redis order: by score, then by member bytes.
    order: BTreeSet<(i64, String)>,
}

impl SortedSet {
    /// `ZADD NX`: a member already present keeps its score.
    fn add(&mut self, score: i64, member: &str) {
        if !self.scores.contains_key(member) {
            self.scores.insert(member.to_string(), score);
            self.order.insert((score, member.to_string()));
        }
    }

    /// `ZINCRBY 1`.
    fn increment(&mut self, member: &str) {
        let old = self.scores.get(member).copied();
        if let Some(old) = old {
            self.order.remove(&(old, member.to_string()));
        }
        let score = old.unwrap_or(0) + 1;
        self.scores.insert(member.to_string(), score);
        self.order.insert((score, member.to_string()));
    }

    fn count(&self, min: i64, max: i64) -> u64 {
        self.order
            .range((min, String::new())..(max, String::new()))
            .count() as u64
    }

    /// `ZUNIONSTORE this 2 this other AGGREGATE MIN`.
    fn merge(&mut self, other: BTreeSet<(i64, String)>) {
        for (score, member) in other {
            match self.scores.get(&member).copied() {
                Some(mine) if mine <= score => {}
                Some(mine) => {
                    self.order.remove(&(mine, member.clone()));
                    self.scores.insert(member.clone(), score);
                    self.order.insert((score, member));
                }
                None => self.add(score, &member),
            }
        }
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
    decisions: MemoryDecisions,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn run(&mut self, ops: &[Op]) -> Vec<OpResult> {
        let mut results: Vec<OpResult> = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Add {
                    key,
                    merge_from,
                    members,
                    trim_below,
                    ranges,
                    evidence,
                    ..
                } => {
                    let previous = merge_from
                        .as_ref()
                        .and_then(|from| self.sets.get(from))
                        .map(|from| from.order.clone());
                    let set = self.sets.entry(key.clone()).or_default();
                    if let Some(previous) = previous {
                        set.merge(previous);
                    }
                    if let Some(bound) = trim_below {
                        set.trim_below(*bound);
                    }
                    let before = ranges.iter().map(|r| set.count(r.min, r.max)).collect();
                    for (score, member) in members {
                        set.add(*score, member);
                    }
                    let after = ranges.iter().map(|r| set.count(r.min, r.max)).collect();
                    results.push(OpResult {
                        before,
                        after,
                        evidence: Vec::new(),
                    });
                    if let Some(evidence) = evidence
                        && evidence.gate.fires(&results)
                        && let Some(result) = results.last_mut()
                    {
                        result.evidence = evidence
                            .ranges
                            .iter()
                            .map(|r| {
                                set.order
                                    .range((r.min, String::new())..(r.max, String::new()))
                                    .take(EVIDENCE_LIMIT)
                                    .map(|(_, m)| m.clone())
                                    .collect()
                            })
                            .collect();
                    }
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
                        set.increment(member);
                    }
                    let mut result = OpResult::default();
                    if evidence.is_some_and(|gate| gate.fires(&results)) {
                        // Redis ZREVRANGE: descending score, ties by descending member.
                        result.evidence = vec![
                            set.order
                                .iter()
                                .rev()
                                .take(*top)
                                .flat_map(|(s, m)| [m.clone(), s.to_string()])
                                .collect(),
                        ];
                    }
                    results.push(result);
                }
            }
        }
        results
    }
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

    fn apply_decisions(&mut self, ops: &[DecisionOp]) -> Result<Vec<DecisionReply>, StateError> {
        self.decisions.apply_decisions(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{CountRef, Evidence, Gate, Range};
    use super::*;

    /// Evidence of range 0 once range 0 exceeds 1 (an excess over a limit of 1).
    fn add(key: &str, members: &[(i64, &str)], ranges: &[(i64, i64)]) -> Op {
        Op::Add {
            key: key.into(),
            merge_from: None,
            ttl_secs: 60,
            members: members.iter().map(|(s, m)| (*s, m.to_string())).collect(),
            trim_below: None,
            ranges: ranges
                .iter()
                .map(|&(min, max)| Range { min, max })
                .collect(),
            evidence: Some(Evidence {
                ranges: vec![Range {
                    min: i64::MIN,
                    max: i64::MAX,
                }],
                gate: Gate::Excess {
                    count: CountRef { op: 0, range: 0 },
                    limit: 1,
                },
            }),
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
        assert_eq!(applied(&out[1]).evidence, [["o1", "o2"]]);
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
    fn a_merged_set_counts_its_members_once_whatever_the_repeats() {
        let mut state = MemoryState::new();
        state.run(&[add("old", &[(1, "o1"), (2, "o2")], &[(0, 100)])]);
        let mut op = add("new", &[(3, "o3")], &[(0, 100)]);
        if let Op::Add { merge_from, .. } = &mut op {
            *merge_from = Some("old".into());
        }
        let out = state.run(std::slice::from_ref(&op));
        assert_eq!(
            (out[0].before.clone(), out[0].after.clone()),
            (vec![2], vec![3])
        );
        // A worker still on the old key adds there; the next merge takes it, once.
        state.run(&[add("old", &[(4, "o4"), (3, "o3")], &[(0, 100)])]);
        let out = state.run(std::slice::from_ref(&op));
        assert_eq!(out[0].after, [4], "o1..o4, each once");
        assert_eq!(state.sets["new"].scores["o3"], 3);
    }

    #[test]
    fn ranges_exclude_their_upper_bound_members_keep_their_score_and_trimming_drops_old_ones() {
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
            *members = vec![(20, "d".into()), (1, "c".into())];
            *trim_below = Some(10);
        }
        let out = state.run(&[op]);
        assert_eq!(out[0].before, [1, 2], "a was trimmed first");
        assert_eq!(out[0].after, [1, 3], "c kept its score 15");
    }

    #[test]
    fn tallies_rank_like_zrevrange() {
        let mut state = MemoryState::new();
        let tally = |members: &[&str]| Op::Tally {
            key: "t".into(),
            ttl_secs: 60,
            members: members.iter().map(|m| m.to_string()).collect(),
            top: 2,
            evidence: Some(Gate::Excess {
                count: CountRef { op: 0, range: 0 },
                limit: 0,
            }),
        };
        state.run(&[add("x", &[], &[(0, 10)]), tally(&["A", "B", "C"])]);
        let out = state.run(&[add("x", &[(1, "x")], &[(0, 10)]), tally(&["B"])]);
        assert_eq!(out[1].evidence, [["B", "2", "C", "1"]]);
    }
}
