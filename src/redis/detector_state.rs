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

use super::step_args::Call;
use crate::detectors::state::{DetectorState, OrderStep, StateError, StepOutcome};
use crate::redis::connect::{Endpoint, Node, SlotMap, slot};
use crate::settings::StoreSettings;

/// Orders per script call: bounds how long one call holds Redis (a script blocks the server).
pub const ORDERS_PER_CALL: usize = 250;

/// Arguments, after the evidence limit and the number of orders, per order:
///
/// - memo key (index into `KEYS`), fingerprint, memo TTL, number of operations, and how many
///   arguments those operations take (a replay or a duplicate jumps over them unread);
/// - an add: its shape (`members + SHAPE * ranges + SHAPE² * merges`), key index, TTL, trim
///   bound (`(<score>`, or empty), the index of the key to merge from when it merges, then per
///   member its score, the member and its ranges as bitmasks of `MASK_BITS`
///   (bit j: whether the score is in range j, so the script never compares numbers), then per
///   range its bounds in `ZCOUNT` syntax, then its evidence ranges' bounds as one text
///   (`<min> <max> ...`, read only when the gate fires), then the gate;
/// - a tally: its shape (`-1 - members`), key index, TTL, the members, the last rank of its
///   evidence (`top - 1`, as `ZREVRANGE` reads it), then the gate;
/// - a gate: one text, a letter and its numbers (`step_args::push_gate`), or `-`.
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

    /// Runs script calls, each `(slot, EVALSHA command in RESP)` of `script`, pipelined into one
    /// round trip (one per primary on a cluster), and answers one reply per call, in order. On error
    /// the connections are dropped: a broken or timed-out connection may hold half a reply, and
    /// on a cluster a redirection (MOVED, ASK), TRYAGAIN or CLUSTERDOWN means the slot map
    /// changed, so the next call starts afresh, reading the map again. The caller redoes the
    /// batch whole.
    pub(super) fn run_scripts<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: impl Iterator<Item = (u16, Vec<u8>)>,
    ) -> Result<Vec<T>, StateError> {
        let result = if self.endpoint.is_cluster() {
            self.run_on_cluster(script, calls.collect())
        } else {
            self.run_on_node(script, calls)
        };
        result.inspect_err(|_| {
            self.connection = None;
            self.nodes = None;
        })
    }

    /// Each call is sent as soon as it is built, so Redis runs the first while the next are
    /// still being written.
    fn run_on_node<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: impl Iterator<Item = (u16, Vec<u8>)>,
    ) -> Result<Vec<T>, StateError> {
        let (replicas, wait_ms) = (self.wait_replicas, self.wait_ms);
        let connection = self.connection()?;
        let wait = (replicas > 0).then(|| wait_command(replicas, wait_ms));
        let answers = exchange(connection, script, calls.map(|(_, c)| c), wait.as_ref())
            .map_err(|e| StateError(e.to_string()))?;
        if let Some(acknowledged) = answers.wait {
            check_replicas(acknowledged, replicas, "redis")?;
        }
        Ok(answers.replies)
    }

    /// One pipeline per primary, all sent before any reply is read, so the nodes work at the
    /// same time. A call's keys share its program's slot, so a call goes to one node whole.
    fn run_on_cluster<T: redis::FromRedisValue>(
        &mut self,
        script: &Script,
        calls: Vec<(u16, Vec<u8>)>,
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
        // Every node's pipeline is sent before any reply is read, so the nodes work at once.
        let wait = (self.wait_replicas > 0).then(|| wait_command(self.wait_replicas, self.wait_ms));
        for (node, members) in &groups {
            let connection = match nodes.connections.entry((*node).clone()) {
                Entry::Occupied(held) => held.into_mut(),
                Entry::Vacant(place) => place.insert(
                    self.endpoint
                        .connect_to(node)
                        .map_err(|e| StateError(format!("connect to {node}: {e}")))?,
                ),
            };
            send(
                connection,
                script,
                members.iter().map(|&i| &calls[i].1),
                wait.as_ref(),
            )
            .map_err(error)?;
        }
        let mut answers: Vec<Option<T>> = calls.iter().map(|_| None).collect();
        for (node, members) in &groups {
            let connection = nodes
                .connections
                .get_mut(*node)
                .ok_or_else(|| StateError(format!("no connection to {node}")))?;
            let received = receive::<T>(connection, members.len(), wait.is_some())
                .map_err(|e| StateError(format!("a script reply from {node}: {e}")))?;
            for (&i, reply) in members.iter().zip(received.replies) {
                answers[i] = Some(reply);
            }
            if let Some(acknowledged) = received.wait {
                check_replicas(acknowledged, self.wait_replicas, &node.to_string())?;
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| StateError("a script call without a reply".into())))
            .collect()
    }
}

/// The replies of one pipeline: one per call, and the replicas `WAIT` counted, if asked.
struct Received<T> {
    replies: Vec<T>,
    wait: Option<u32>,
}

/// Sends one pipeline: the script's load (which costs a hash of a short script and survives a
/// Redis restart, which forgets loaded scripts, without a NOSCRIPT round trip), the calls as
/// they were packed, each written as it comes, then `WAIT` if given. Answers how many calls
/// it sent.
fn send<C: AsRef<[u8]>>(
    connection: &mut Connection,
    script: &Script,
    calls: impl Iterator<Item = C>,
    wait: Option<&redis::Cmd>,
) -> redis::RedisResult<usize> {
    let mut load = redis::pipe();
    load.load_script(script);
    connection.send_packed_command(&load.get_packed_pipeline())?;
    let mut sent = 0;
    for call in calls {
        connection.send_packed_command(call.as_ref())?;
        sent += 1;
    }
    if let Some(wait) = wait {
        connection.send_packed_command(&wait.get_packed_command())?;
    }
    Ok(sent)
}

/// Reads what [`send`] asked for: the load's reply, `calls` replies, and `WAIT`'s.
fn receive<T: redis::FromRedisValue>(
    connection: &mut Connection,
    calls: usize,
    wait: bool,
) -> redis::RedisResult<Received<T>> {
    let mut reply = || connection.recv_response().and_then(|v| v.extract_error());
    reply()?;
    let replies = (0..calls)
        .map(|_| redis::from_redis_value(reply()?).map_err(redis::RedisError::from))
        .collect::<redis::RedisResult<Vec<T>>>()?;
    let wait = match wait {
        true => Some(redis::from_redis_value(reply()?)?),
        false => None,
    };
    Ok(Received { replies, wait })
}

/// [`send`] then [`receive`] on one connection.
fn exchange<T: redis::FromRedisValue>(
    connection: &mut Connection,
    script: &Script,
    calls: impl Iterator<Item = Vec<u8>>,
    wait: Option<&redis::Cmd>,
) -> redis::RedisResult<Received<T>> {
    let count = send(connection, script, calls, wait)?;
    receive(connection, count, wait.is_some())
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
        let calls: Vec<&[usize]> = groups
            .iter()
            .flat_map(|(_, members)| members.chunks(ORDERS_PER_CALL))
            .collect();
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.script.clone();
        // Built one by one as they are sent (on one node, each goes out as soon as it is built).
        let commands = calls.iter().map(|chunk| {
            let call = Call::new(steps, chunk);
            let slot = call.keys.first().map_or(0, |key| slot(key.as_bytes()));
            (slot, call.command(script.get_hash()))
        });
        let answers: Vec<Vec<String>> = self.run_scripts(&script, commands)?;
        if answers.len() != calls.len() {
            return Err(StateError(format!(
                "{} replies to {} script calls",
                answers.len(),
                calls.len()
            )));
        }
        let mut outcomes: Vec<Option<StepOutcome>> = vec![None; steps.len()];
        for (chunk, answer) in calls.iter().zip(answers) {
            if answer.len() != chunk.len() {
                return Err(StateError("a script reply of the wrong length".into()));
            }
            for (&i, text) in chunk.iter().zip(answer) {
                outcomes[i] = Some(super::step_reply::parse_outcome(&text)?);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StateError("a step without an outcome".into())))
            .collect()
    }
}
