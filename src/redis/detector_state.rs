//! Detector state in Redis: one Lua script call per program (hash slot) and chunk of a batch,
//! all calls of a batch pipelined into one round trip.
//!
//! For each order the script first reads the order's replay record. Present with the same
//! fingerprint (a replay after an aborted batch or a crash): it returns the recorded results and
//! changes nothing. Present with another fingerprint: a duplicate, nothing changes. Absent: it
//! applies the order's operations, records fingerprint and results with the replay TTL, and
//! returns the results. A script runs atomically, so an order's changes and its replay record
//! are written together or not at all; a batch that fails half-way is redone as a whole, and the
//! orders already applied come back as replays with the same results.
//!
//! Every key a call touches carries the program's hash tag (`{<program_id>}`) and is passed in
//! `KEYS`, so the same script runs unchanged on Redis Cluster with one call per slot, the calls
//! pipelined per primary (see [`RedisState::run_on_cluster`]). (If
//! `store.key_prefix` itself holds a hash tag, that one wins and every detector key shares its
//! slot: still correct, just not spread out.)

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::{Connection, Script};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::detectors::state::{
    CountRef, DetectorState, Gate, Op, OpResult, OrderStep, Range, StateError, StepOutcome,
};
use crate::redis::connect::{Endpoint, Node, SlotMap, slot};
use crate::settings::StoreSettings;

/// Orders per script call: bounds how long one call holds Redis (a script blocks the server).
const ORDERS_PER_CALL: usize = 250;

/// Digits of a number written after the arguments it counts ([`Args::placeholder`]).
const PLACEHOLDER_WIDTH: usize = 9;

/// Ranges per bitmask argument: a Lua number is a double, exact below 2^53.
const MASK_BITS: usize = 50;

/// An add's shape is `members + SHAPE * ranges + SHAPE² * merges` (the script's `SHAPE`;
/// `merges` is 1 when the add merges a set first): an add's members are the order and its
/// codes, far below 2^20, and the sum stays below 2^41, exact in a double.
const SHAPE: u64 = 1 << 20;

/// Arguments, after the evidence limit and the number of orders, per order:
///
/// - memo key (index into `KEYS`), fingerprint, memo TTL, number of operations, and how many
///   arguments those operations take (a replay or a duplicate jumps over them unread);
/// - an add: its shape (`members + SHAPE * ranges + SHAPE² * merges`), key index, TTL, trim
///   bound (`(<score>`, or empty), the index of the key to merge from when it merges, then per
///   member its score, the member and its ranges as bitmasks of [`MASK_BITS`]
///   (bit j: whether the score is in range j, so the script never compares numbers), then per
///   range its bounds in `ZCOUNT` syntax, then its evidence ranges' bounds as one text
///   (`<min> <max> ...`, read only when the gate fires), then the gate;
/// - a tally: its shape (`-1 - members`), key index, TTL, the members, the last rank of its
///   evidence (`top - 1`, as `ZREVRANGE` reads it), then the gate;
/// - a gate: one text, a letter and its numbers ([`push_gate`]), or `-`.
///
/// Every argument costs Redis a Lua string before the script runs, hence the packing; a
/// gate's text repeats across orders and the script parses each distinct one once per call.
///
/// Results come back as JSON of the same shape `cjson` wrote before (a list of
/// `{"b":[..],"a":[..],"e":[..]}`), so replay records of either script read the same with
/// either worker, and a rolling upgrade needs no record version.
const SCRIPT: &str = include_str!("detector_step.lua");

/// Where the worker's detector state lives; connects on first use and again after any error.
pub struct RedisState {
    endpoint: Endpoint,
    /// Single node.
    connection: Option<Connection>,
    /// Cluster: the slot map as last read, and a connection per primary used since.
    nodes: Option<Nodes>,
    script: Script,
    /// The decision store's script (`decision_store.rs`), loaded on first use.
    decisions: Option<Script>,
    /// `store.wait_replicas` and the `WAIT` timeout.
    wait_replicas: u32,
    wait_ms: u64,
}

struct Nodes {
    map: SlotMap,
    connections: HashMap<Node, Connection>,
}

impl RedisState {
    /// One node at `url`.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<RedisState, StateError> {
        RedisState::from_settings(&StoreSettings {
            redis_url: url.into(),
            connect_timeout_ms: connect_timeout.as_millis() as u64,
            io_timeout_ms: io_timeout.as_millis() as u64,
            ..StoreSettings::default()
        })
    }

    /// The Redis of `store.*`: one node or a cluster, with its TLS settings.
    pub fn from_settings(store: &StoreSettings) -> Result<RedisState, StateError> {
        let endpoint = Endpoint::new(store).map_err(|e| {
            StateError(format!(
                "bad store.redis_url {}: {e}",
                store.redis_url.redacted()
            ))
        })?;
        Ok(RedisState {
            endpoint,
            connection: None,
            nodes: None,
            script: Script::new(SCRIPT),
            decisions: None,
            wait_replicas: store.wait_replicas,
            wait_ms: (store.io_timeout_ms / 2).max(1),
        })
    }

    fn connection(&mut self) -> Result<&mut Connection, StateError> {
        if self.connection.is_none() {
            let connection = self
                .endpoint
                .connect_for("")
                .map_err(|e| StateError(format!("connect: {e}")))?;
            self.connection = Some(connection);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| StateError("no connection".into()))
    }

    pub(super) fn decision_script(&mut self) -> Script {
        self.decisions
            .get_or_insert_with(super::decision_store::script)
            .clone()
    }

    /// Runs script calls, each `(slot, EVALSHA command)` of `script`, pipelined into one round
    /// trip (one per primary on a cluster), and answers one reply per call, in order. On error
    /// the connections are dropped: a broken or timed-out connection may hold half a reply, and
    /// on a cluster a redirection (MOVED, ASK), TRYAGAIN or CLUSTERDOWN means the slot map
    /// changed, so the next call starts afresh, reading the map again. The caller redoes the
    /// batch whole.
    pub(super) fn run_scripts<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: Vec<(u16, redis::Cmd)>,
    ) -> Result<Vec<T>, StateError> {
        let result = if self.endpoint.is_cluster() {
            self.run_on_cluster(script, calls)
        } else {
            self.run_on_node(script, calls)
        };
        result.inspect_err(|_| {
            self.connection = None;
            self.nodes = None;
        })
    }

    fn run_on_node<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: Vec<(u16, redis::Cmd)>,
    ) -> Result<Vec<T>, StateError> {
        let mut pipe = redis::pipe();
        // Loading with every batch costs a hash of a short script and survives a Redis restart
        // (which forgets loaded scripts) without a NOSCRIPT round trip.
        pipe.load_script(script).ignore();
        for (_, cmd) in calls {
            pipe.add_command(cmd);
        }
        let (replicas, wait_ms) = (self.wait_replicas, self.wait_ms);
        let connection = self.connection()?;
        let answers = pipe
            .query::<Vec<T>>(connection)
            .map_err(|e| StateError(e.to_string()))?;
        if replicas > 0 {
            let acknowledged: u32 = wait_command(replicas, wait_ms)
                .query(connection)
                .map_err(|e| StateError(e.to_string()))?;
            check_replicas(acknowledged, replicas, "redis")?;
        }
        Ok(answers)
    }

    /// One pipeline per primary, all sent before any reply is read, so the nodes work at the
    /// same time. A call's keys share its program's slot, so a call goes to one node whole.
    fn run_on_cluster<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: Vec<(u16, redis::Cmd)>,
    ) -> Result<Vec<T>, StateError> {
        let error = |e: redis::RedisError| StateError(e.to_string());
        if self.nodes.is_none() {
            self.nodes = Some(Nodes {
                map: self.endpoint.slot_map().map_err(error)?,
                connections: HashMap::new(),
            });
        }
        let Some(nodes) = self.nodes.as_mut() else {
            return Err(StateError("no slot map".into()));
        };
        let mut groups: BTreeMap<&Node, Vec<usize>> = BTreeMap::new();
        for (i, (slot, _)) in calls.iter().enumerate() {
            let node = nodes
                .map
                .primary(*slot)
                .ok_or_else(|| StateError(format!("CLUSTERDOWN no primary serves slot {slot}")))?;
            groups.entry(node).or_default().push(i);
        }
        for (node, members) in &groups {
            let connection = match nodes.connections.entry((*node).clone()) {
                Entry::Occupied(held) => held.into_mut(),
                Entry::Vacant(place) => place.insert(
                    self.endpoint
                        .connect_to(node)
                        .map_err(|e| StateError(format!("connect to {node}: {e}")))?,
                ),
            };
            let mut pipe = redis::pipe();
            pipe.load_script(script);
            for &i in members {
                pipe.add_command(calls[i].1.clone());
            }
            if self.wait_replicas > 0 {
                pipe.add_command(wait_command(self.wait_replicas, self.wait_ms));
            }
            connection
                .send_packed_command(&pipe.get_packed_pipeline())
                .map_err(error)?;
        }
        let mut answers: Vec<Option<T>> = calls.iter().map(|_| None).collect();
        for (node, members) in &groups {
            let connection = nodes
                .connections
                .get_mut(*node)
                .ok_or_else(|| StateError(format!("no connection to {node}")))?;
            let mut reply = || connection.recv_response().and_then(|v| v.extract_error());
            reply().map_err(error)?;
            for &i in members {
                answers[i] = Some(
                    redis::from_redis_value(reply().map_err(error)?)
                        .map_err(|e| StateError(format!("a script reply from {node}: {e}")))?,
                );
            }
            if self.wait_replicas > 0 {
                let acknowledged: u32 = redis::from_redis_value(reply().map_err(error)?)
                    .map_err(|e| StateError(format!("a WAIT reply from {node}: {e}")))?;
                check_replicas(acknowledged, self.wait_replicas, &node.to_string())?;
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| StateError("a script call without a reply".into())))
            .collect()
    }
}

/// `WAIT`: blocks until `replicas` replicas acknowledged this connection's writes, or `ms`.
fn wait_command(replicas: u32, ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(ms);
    cmd
}

fn check_replicas(acknowledged: u32, wanted: u32, node: &str) -> Result<(), StateError> {
    if acknowledged < wanted {
        return Err(StateError(format!(
            "{node}: {acknowledged} of {wanted} replicas (store.wait_replicas) acknowledged the detector state in time"
        )));
    }
    Ok(())
}

impl DetectorState for RedisState {
    fn apply_decisions(
        &mut self,
        ops: &[crate::reversals::store::DecisionOp],
    ) -> Result<Vec<crate::reversals::store::DecisionReply>, StateError> {
        self.apply_decision_ops(ops)
    }

    fn apply(&mut self, steps: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            let slot = *index.entry(step.group.as_str()).or_insert_with(|| {
                groups.push((step.group.as_str(), Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(i);
        }
        let calls: Vec<Call<'_>> = groups
            .iter()
            .flat_map(|(_, members)| members.chunks(ORDERS_PER_CALL))
            .map(|chunk| Call::new(steps, chunk))
            .collect();
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.script.clone();
        let commands = calls
            .iter()
            .map(|call| {
                let slot = call.keys.first().map_or(0, |key| slot(key.as_bytes()));
                (slot, call.command(script.get_hash()))
            })
            .collect();
        let answers: Vec<Vec<String>> = self.run_scripts(&script, commands)?;
        if answers.len() != calls.len() {
            return Err(StateError(format!(
                "{} replies to {} script calls",
                answers.len(),
                calls.len()
            )));
        }
        let mut outcomes: Vec<Option<StepOutcome>> = vec![None; steps.len()];
        for (call, answer) in calls.iter().zip(answers) {
            if answer.len() != call.steps.len() {
                return Err(StateError("a script reply of the wrong length".into()));
            }
            for (&i, text) in call.steps.iter().zip(answer) {
                outcomes[i] = Some(parse_outcome(&text)?);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StateError("a step without an outcome".into())))
            .collect()
    }
}

/// The script's arguments, back to back in one buffer: a batch has a few hundred thousand of
/// them, and one allocation each would cost more than the script.
#[derive(Default)]
struct Args {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    fn text(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
        self.ends.push(self.bytes.len());
    }

    fn number(&mut self, n: impl std::fmt::Display) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(self.bytes, "{n}");
        self.ends.push(self.bytes.len());
    }

    /// A number written later ([`Args::fill`]): its place, zero-padded to a fixed width the
    /// script reads as the number.
    fn placeholder(&mut self) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[b'0'; PLACEHOLDER_WIDTH]);
        self.ends.push(self.bytes.len());
        at
    }

    /// `n` must fit the width; an order's operations take a few hundred arguments at most.
    fn fill(&mut self, at: usize, n: usize) {
        let text = format!("{n:0PLACEHOLDER_WIDTH$}");
        if let Some(place) = self.bytes.get_mut(at..at + PLACEHOLDER_WIDTH)
            && text.len() == PLACEHOLDER_WIDTH
        {
            place.copy_from_slice(text.as_bytes());
        }
    }

    fn count(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

/// One script call: the steps of one program (chunk), with their keys deduplicated.
struct Call<'s> {
    steps: Vec<usize>,
    keys: Vec<&'s str>,
    args: Args,
}

impl<'s> Call<'s> {
    fn new(all: &'s [OrderStep], chosen: &[usize]) -> Call<'s> {
        let mut keys: Vec<&'s str> = Vec::new();
        let mut key_index: HashMap<&'s str, usize, foldhash::fast::RandomState> =
            HashMap::default();
        let mut key = |name: &'s str| -> usize {
            *key_index.entry(name).or_insert_with(|| {
                keys.push(name);
                keys.len()
            })
        };
        let mut args = Args::default();
        args.number(crate::detectors::state::EVIDENCE_LIMIT);
        args.number(chosen.len());
        for &i in chosen {
            let step = &all[i];
            args.number(key(&step.memo_key));
            args.text(&step.fingerprint);
            args.number(step.memo_ttl_secs.max(1));
            args.number(step.ops.len());
            let skip = args.placeholder();
            let start = args.count();
            for op in &step.ops {
                match op {
                    Op::Add {
                        key: name,
                        merge_from,
                        ttl_secs,
                        members,
                        trim_below,
                        ranges,
                        evidence,
                    } => {
                        let merges = u64::from(merge_from.is_some());
                        args.number(
                            members.len() as u64
                                + SHAPE * ranges.len() as u64
                                + SHAPE * SHAPE * merges,
                        );
                        args.number(key(name));
                        args.number(ttl_secs.max(&1));
                        match trim_below {
                            Some(bound) => args.number(format_args!("({bound}")),
                            None => args.text(""),
                        }
                        if let Some(from) = merge_from {
                            args.number(key(from));
                        }
                        for (score, member) in members {
                            args.number(score);
                            args.text(member);
                            for chunk in ranges.chunks(MASK_BITS) {
                                let mask = chunk
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, r)| r.contains(*score))
                                    .fold(0u64, |mask, (j, _)| mask | 1 << j);
                                args.number(mask);
                            }
                        }
                        push_ranges(&mut args, ranges);
                        let evidence_ranges = evidence.as_ref().map_or(&[][..], |e| &e.ranges);
                        let mut text = String::new();
                        for range in evidence_ranges {
                            let (min, max) = bounds(*range);
                            if !text.is_empty() {
                                text.push(' ');
                            }
                            text.push_str(&min);
                            text.push(' ');
                            text.push_str(&max);
                        }
                        args.text(&text);
                        push_gate(&mut args, evidence.as_ref().map(|e| &e.gate));
                    }
                    Op::Tally {
                        key: name,
                        ttl_secs,
                        members,
                        top,
                        evidence,
                    } => {
                        args.number(-1 - members.len() as i128);
                        args.number(key(name));
                        args.number(ttl_secs.max(&1));
                        for member in members {
                            args.text(member);
                        }
                        // ZREVRANGE's inclusive stop; `top` 0 gives -1 (all), as before.
                        args.number(*top as i128 - 1);
                        push_gate(&mut args, evidence.as_ref());
                    }
                }
            }
            args.fill(skip, args.count() - start);
        }
        Call {
            steps: chosen.to_vec(),
            keys,
            args,
        }
    }

    /// `EVALSHA` of the loaded script with this call's keys and arguments.
    fn command(&self, sha: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(self.keys.len());
        for k in &self.keys {
            cmd.arg(*k);
        }
        for a in self.args.iter() {
            cmd.arg(a);
        }
        cmd
    }
}

/// Each range's bounds in `ZCOUNT` syntax (the script passes them on as they are).
fn push_ranges(args: &mut Args, ranges: &[Range]) {
    for range in ranges {
        let (min, max) = bounds(*range);
        args.text(&min);
        args.text(&max);
    }
}

/// A gate as the script reads it: one text, a letter, then its numbers, space-separated; `-`
/// for none.
fn push_gate(args: &mut Args, gate: Option<&Gate>) {
    let at = |c: CountRef| [c.op as u64, c.range as u64];
    let (letter, numbers): (&str, Vec<u64>) = match gate {
        None => ("-", Vec::new()),
        Some(Gate::Excess { count, limit }) => ("X", [&at(*count)[..], &[*limit]].concat()),
        Some(Gate::Share {
            part,
            total,
            min_total,
            percent,
        }) => (
            "S",
            [&at(*part)[..], &at(*total), &[*min_total, *percent]].concat(),
        ),
        Some(Gate::Spike {
            uses,
            base,
            buckets,
            factor,
            floor,
        }) => (
            "P",
            [&at(*uses)[..], &at(*base), &[*buckets, *factor, *floor]].concat(),
        ),
        Some(Gate::Either {
            distinct,
            unknown,
            min_distinct,
            min_unknown,
        }) => (
            "E",
            [
                &at(*distinct)[..],
                &at(*unknown),
                &[*min_distinct, *min_unknown],
            ]
            .concat(),
        ),
    };
    let mut text = letter.to_string();
    for n in numbers {
        text.push(' ');
        text.push_str(&n.to_string());
    }
    args.text(&text);
}

/// The bounds of `min <= score < max` in `ZCOUNT` syntax: the upper one exclusive, the open
/// ends as the infinities Redis reads.
fn bounds(range: Range) -> (String, String) {
    let min = if range.min == i64::MIN {
        "-inf".to_string()
    } else {
        range.min.to_string()
    };
    let max = if range.max == i64::MAX {
        "+inf".to_string()
    } else {
        format!("({}", range.max)
    };
    (min, max)
}

fn parse_outcome(text: &str) -> Result<StepOutcome, StateError> {
    match text.split_at_checked(1) {
        Some(("D", _)) => Ok(StepOutcome::Duplicate),
        Some(("N" | "R", json)) => parse_results(json).map(StepOutcome::Applied),
        _ => Err(StateError(format!("unexpected script reply {text:?}"))),
    }
}

/// A list as cjson writes it: an empty Lua table comes out as `{}`, so an empty list may
/// arrive as an empty object.
struct Lenient<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list, or an empty object for an empty list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Lenient(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(Vec::new()))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawResult {
    b: Lenient<u64>,
    a: Lenient<u64>,
    e: Lenient<Lenient<String>>,
}

fn parse_results(json: &str) -> Result<Vec<OpResult>, StateError> {
    let raw: Lenient<RawResult> = serde_json::from_str(json)
        .map_err(|e| StateError(format!("unreadable script result: {e}")))?;
    Ok(raw
        .0
        .into_iter()
        .map(|r| OpResult {
            before: r.b.0,
            after: r.a.0,
            evidence: r.e.0.into_iter().map(|l| l.0).collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_empty_objects_as_empty_lists() {
        let parsed =
            parse_outcome(r#"N[{"b":{},"a":[3],"e":[["o1","o2"],{}]},{"b":[1],"a":[2],"e":{}}]"#)
                .expect("parses");
        let StepOutcome::Applied(results) = parsed else {
            panic!("applied")
        };
        assert_eq!(results[0].after, [3]);
        assert!(results[0].before.is_empty());
        assert_eq!(results[0].evidence, [vec!["o1", "o2"], vec![]]);
        assert!(results[1].evidence.is_empty());
        assert_eq!(
            parse_outcome("R{}").expect("parses"),
            StepOutcome::Applied(Vec::new())
        );
        assert_eq!(parse_outcome("D").expect("parses"), StepOutcome::Duplicate);
        assert!(parse_outcome("x").is_err());
    }

    #[test]
    fn bounds_exclude_the_upper_end() {
        assert_eq!(
            bounds(Range { min: 5, max: 9 }),
            ("5".to_string(), "(9".to_string())
        );
        assert_eq!(
            bounds(Range {
                min: i64::MIN,
                max: i64::MAX
            }),
            ("-inf".to_string(), "+inf".to_string())
        );
    }
}
