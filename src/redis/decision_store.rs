//! The decision store in Redis (`src/reversals`): one hash per decided order, under the
//! program's hash tag like the detectors' keys, so one script call per program covers a chunk
//! of the batch on Redis Cluster too (routed and pipelined per primary like the detector step,
//! [`RedisState::run_scripts`]). The calls of a batch are pipelined into one round trip, made
//! after the detector step (a summary holds the decision the detectors finished).
//!
//! Replay safety: a summary is written only if the order has none (`HSETNX`), so a replayed
//! batch leaves the first bytes in place; an adjustment request is appended only under a new
//! `adjustment_id`, and the reply is the log up to that id's first request, so a replay or a
//! repeat is evaluated on the same inputs and gives the same record. A script runs atomically:
//! an adjustment's append and its reply cannot be torn by a crash.

use std::collections::HashMap;

use redis::Script;

use super::connect::slot;
use super::detector_state::RedisState;
use crate::detectors::StateError;
use crate::detectors::kinds::reversal_rate::{RateCounter, RateCounts};
use crate::reversals::store::{DecisionOp, DecisionReply};

/// Operations per script call: bounds how long one call holds Redis.
const OPS_PER_CALL: usize = 500;

const SCRIPT: &str = include_str!("decision_store.lua");

pub(super) fn script() -> Script {
    Script::new(SCRIPT)
}

impl RedisState {
    pub(super) fn apply_decision_ops(
        &mut self,
        ops: &[DecisionOp],
    ) -> Result<Vec<DecisionReply>, StateError> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let slot = *index.entry(op.group()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push(i);
        }
        let calls: Vec<&[usize]> = groups
            .iter()
            .flat_map(|members| members.chunks(OPS_PER_CALL))
            .collect();
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.decision_script();
        // Every key of a call is in its program's slot: the first one routes it on a cluster.
        let commands = calls.iter().map(|chunk| {
            let first = chunk.first().map_or("", |&i| ops[i].key());
            (
                slot(first.as_bytes()),
                command(ops, chunk, script.get_hash()).get_packed_command(),
            )
        });
        let answers: Vec<Vec<Vec<String>>> = self.run_scripts(&script, commands)?;
        if answers.len() != calls.len() {
            return Err(StateError(format!(
                "{} replies to {} decision calls",
                answers.len(),
                calls.len()
            )));
        }
        let mut replies: Vec<Option<DecisionReply>> = vec![None; ops.len()];
        for (chunk, answer) in calls.iter().zip(answers) {
            if answer.len() != chunk.len() {
                return Err(StateError("a decision reply of the wrong length".into()));
            }
            for (&i, parts) in chunk.iter().zip(answer) {
                replies[i] = Some(parse_reply(parts)?);
            }
        }
        replies
            .into_iter()
            .map(|r| r.ok_or_else(|| StateError("an operation without a reply".into())))
            .collect()
    }
}

fn command(ops: &[DecisionOp], chunk: &[usize], sha: &str) -> redis::Cmd {
    let mut keys = Keys::default();
    let mut args: Vec<String> = vec![chunk.len().to_string()];
    for &i in chunk {
        let (kind, key, values): (&str, &str, Vec<String>) = match &ops[i] {
            DecisionOp::Record {
                key,
                summary,
                ttl_secs,
                ..
            } => (
                "S",
                key,
                vec![ttl_secs.max(&1).to_string(), summary.clone()],
            ),
            DecisionOp::Adjust {
                key,
                adjustment_id,
                request,
                ..
            } => ("A", key, vec![adjustment_id.clone(), request.clone()]),
            DecisionOp::Credit {
                key,
                summary,
                counter,
                ..
            } => {
                let mut values = vec![summary.clone(), keys.index(&counter.key)];
                values.extend(counted(counter, None));
                ("C", key, values)
            }
            DecisionOp::Reverse {
                key,
                adjustment_id,
                order_id,
                counter,
                ..
            } => {
                let mut values = vec![adjustment_id.clone(), keys.index(&counter.key)];
                values.extend(counted(counter, Some(order_id)));
                ("R", key, values)
            }
        };
        args.extend([kind.to_string(), keys.index(key), values.len().to_string()]);
        args.extend(values);
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(keys.list.len());
    for key in keys.list {
        cmd.arg(key);
    }
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

/// A call's KEYS, each once, and their 1-based positions as the script names them.
#[derive(Default)]
struct Keys<'o> {
    list: Vec<&'o str>,
    at: HashMap<&'o str, usize>,
}

impl<'o> Keys<'o> {
    fn index(&mut self, key: &'o str) -> String {
        let list = &mut self.list;
        let at = *self.at.entry(key).or_insert_with(|| {
            list.push(key);
            list.len()
        });
        at.to_string()
    }
}

/// A counter's values after its key: ttl, units, the order id of a reversal, the fields.
fn counted(counter: &RateCounter, order_id: Option<&String>) -> Vec<String> {
    let mut values = vec![
        counter.ttl_secs.max(1).to_string(),
        counter.units.to_string(),
    ];
    values.extend(order_id.cloned());
    values.extend(counter.fields.iter().cloned());
    values
}

fn parse_reply(mut parts: Vec<String>) -> Result<DecisionReply, StateError> {
    match (parts.first().map(String::as_str), parts.len()) {
        (Some("S"), 2) => Ok(DecisionReply::Recorded {
            new: parts[1] == "1",
        }),
        (Some("N"), _) => Ok(DecisionReply::NoOriginal),
        (Some("C"), _) => Ok(DecisionReply::Credited),
        (Some("R"), 2) => RateCounts::parse_all(&parts[1])
            .map(DecisionReply::Rates)
            .map_err(|e| StateError(format!("a reversal count record: {e}"))),
        (Some("L"), len) if len >= 3 => {
            let requests = parts.split_off(2);
            let summary = parts.swap_remove(1);
            Ok(DecisionReply::Log { summary, requests })
        }
        _ => Err(StateError(format!("unexpected decision reply {parts:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_nonsense_is_an_error() {
        let parts = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_reply(parts(&["S", "1"])),
            Ok(DecisionReply::Recorded { new: true })
        );
        assert_eq!(parse_reply(parts(&["C"])), Ok(DecisionReply::Credited));
        assert_eq!(
            parse_reply(parts(&["R", "[]"])),
            Ok(DecisionReply::Rates(Vec::new()))
        );
        assert!(parse_reply(parts(&["R", "[[1]]"])).is_err());
        assert_eq!(parse_reply(parts(&["N"])), Ok(DecisionReply::NoOriginal));
        assert_eq!(
            parse_reply(parts(&["L", "s", "r1", "r2"])),
            Ok(DecisionReply::Log {
                summary: "s".into(),
                requests: vec!["r1".into(), "r2".into()],
            })
        );
        assert!(
            parse_reply(parts(&["L", "s"])).is_err(),
            "a log has its request"
        );
        assert!(parse_reply(Vec::new()).is_err());
    }
}
