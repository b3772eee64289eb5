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
//! `KEYS`, so the same script runs unchanged on Redis Cluster with one call per slot. (If
//! `store.key_prefix` itself holds a hash tag, that one wins and every detector key shares its
//! slot: still correct, just not spread out.)

use std::collections::HashMap;
use std::time::Duration;

use redis::{Client, Connection, Script};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::detectors::state::{
    CountRef, DetectorState, Gate, Op, OpResult, OrderStep, Range, StateError, StepOutcome,
};

/// Orders per script call: bounds how long one call holds Redis (a script blocks the server).
const ORDERS_PER_CALL: usize = 250;

const SCRIPT: &str = r#"
local pos = 0
local function take() pos = pos + 1; return ARGV[pos] end
local arity = { X = 3, S = 6, P = 7, E = 6 }
local function take_gate()
  local t = take()
  if t == '-' then return nil end
  local g = { t = t }
  for i = 1, arity[t] do g[i] = tonumber(take()) end
  return g
end
local function count(results, op, range)
  local r = results[op + 1]
  if not r then return 0, 0 end
  return (r.b[range + 1] or 0), (r.a[range + 1] or 0)
end
-- Whether a power of two lies in (b, a].
local function crossed(b, a)
  local p = 1
  while p <= b do p = p * 2 end
  return a > b and p <= a
end
-- Mirrors Gate::fires in state.rs.
local function fires(g, results)
  if g.t == 'X' then
    local b, a = count(results, g[1], g[2])
    return crossed(math.max(b - g[3], 0), math.max(a - g[3], 0))
  elseif g.t == 'S' then
    local pb, pa = count(results, g[1], g[2])
    local tb, ta = count(results, g[3], g[4])
    local function holds(p, t) return t >= g[5] and p * 100 > g[6] * t end
    return holds(pa, ta) and ((not holds(pb, tb)) or crossed(pb, pa))
  elseif g.t == 'P' then
    local ub, ua = count(results, g[1], g[2])
    local _, base = count(results, g[3], g[4])
    local function holds(u) return u * g[5] > g[6] * base and u >= g[7] end
    return holds(ua) and ((not holds(ub)) or crossed(ub, ua))
  elseif g.t == 'E' then
    local db, da = count(results, g[1], g[2])
    local ub, ua = count(results, g[3], g[4])
    local function holds(d, u) return d >= g[5] or u >= g[6] end
    return holds(da, ua) and ((not holds(db, ub)) or crossed(db, da))
  end
  return false
end
local limit = tonumber(take())
local out = {}
local refreshed = {}
local orders = tonumber(take())
for o = 1, orders do
  local memo = KEYS[tonumber(take())]
  local fingerprint = take()
  local memo_ttl = tonumber(take())
  local nops = tonumber(take())
  local ops = {}
  for i = 1, nops do
    local op = { kind = take(), key = KEYS[tonumber(take())], ttl = tonumber(take()), members = {} }
    local n = tonumber(take())
    if op.kind == 'A' then
      for j = 1, n do op.members[j] = { take(), take() } end
      op.trim = take()
      op.ranges = {}
      for j = 1, tonumber(take()) do
        local min, max = take(), take()
        op.ranges[j] = {
          min, (max == '+inf') and max or ('(' .. max),
          (min == '-inf') and -math.huge or tonumber(min),
          (max == '+inf') and math.huge or tonumber(max),
        }
      end
      op.evidence = {}
      for j = 1, tonumber(take()) do
        local min, max = take(), take()
        op.evidence[j] = { min, (max == '+inf') and max or ('(' .. max) }
      end
    else
      for j = 1, n do op.members[j] = take() end
      op.top = tonumber(take())
    end
    op.gate = take_gate()
    ops[i] = op
  end
  local stored = redis.call('GET', memo)
  if stored then
    local nl = string.find(stored, '\n', 1, true)
    if nl and string.sub(stored, 1, nl - 1) == fingerprint then
      out[o] = 'R' .. string.sub(stored, nl + 1)
    else
      out[o] = 'D'
    end
  else
    local results = {}
    for i, op in ipairs(ops) do
      local r = { b = {}, a = {}, e = {} }
      local added = false
      if op.kind == 'A' then
        if op.trim ~= '' then
          redis.call('ZREMRANGEBYSCORE', op.key, '-inf', '(' .. op.trim)
        end
        local delta = {}
        for j = 1, #op.ranges do delta[j] = 0 end
        for _, m in ipairs(op.members) do
          if redis.call('ZADD', op.key, 'NX', m[1], m[2]) == 1 then
            added = true
            local score = tonumber(m[1])
            for j, range in ipairs(op.ranges) do
              if score >= range[3] and score < range[4] then delta[j] = delta[j] + 1 end
            end
          end
        end
        for j, range in ipairs(op.ranges) do
          r.a[j] = redis.call('ZCOUNT', op.key, range[1], range[2])
          r.b[j] = r.a[j] - delta[j]
        end
      else
        for _, m in ipairs(op.members) do
          redis.call('ZINCRBY', op.key, 1, m)
          added = true
        end
      end
      -- A key's time to live is refreshed once per call: it only collects garbage, and the
      -- orders of one call are milliseconds apart.
      if added and not refreshed[op.key] then
        redis.call('EXPIRE', op.key, op.ttl)
        refreshed[op.key] = true
      end
      results[i] = r
      if op.gate and fires(op.gate, results) then
        if op.kind == 'A' then
          for j, range in ipairs(op.evidence) do
            r.e[j] = redis.call('ZRANGEBYSCORE', op.key, range[1], range[2], 'LIMIT', 0, limit)
          end
        else
          r.e[1] = redis.call('ZREVRANGE', op.key, 0, op.top - 1, 'WITHSCORES')
        end
      end
    end
    local encoded = cjson.encode(results)
    redis.call('SET', memo, fingerprint .. '\n' .. encoded, 'EX', memo_ttl)
    out[o] = 'N' .. encoded
  end
end
return out
"#;

/// Where the worker's detector state lives; connects on first use and again after any error.
pub struct RedisState {
    client: Client,
    connection: Option<Connection>,
    connect_timeout: Duration,
    io_timeout: Duration,
    script: Script,
}

impl RedisState {
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<RedisState, StateError> {
        let client = Client::open(url).map_err(|e| {
            StateError(format!(
                "bad store.redis_url {}: {e}",
                crate::settings::redacted_url(url)
            ))
        })?;
        Ok(RedisState {
            client,
            connection: None,
            connect_timeout,
            io_timeout,
            script: Script::new(SCRIPT),
        })
    }

    fn connection(&mut self) -> Result<&mut Connection, StateError> {
        if self.connection.is_none() {
            let connection = self
                .client
                .get_connection_with_timeout(self.connect_timeout)
                .map_err(|e| StateError(format!("connect: {e}")))?;
            for set in [Connection::set_read_timeout, Connection::set_write_timeout] {
                set(&connection, Some(self.io_timeout))
                    .map_err(|e| StateError(format!("socket timeout: {e}")))?;
            }
            self.connection = Some(connection);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| StateError("no connection".into()))
    }

    fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Vec<String>>, StateError> {
        let mut pipe = redis::pipe();
        // Loading with every batch costs a hash of a short script and survives a Redis restart
        // (which forgets loaded scripts) without a NOSCRIPT round trip.
        pipe.load_script(&self.script).ignore();
        for call in calls {
            pipe.add_command(call.command(self.script.get_hash()));
        }
        let connection = self.connection()?;
        pipe.query::<Vec<Vec<String>>>(connection)
            .map_err(|e| StateError(e.to_string()))
    }
}

impl DetectorState for RedisState {
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
        let answers = self.run(&calls).inspect_err(|_| {
            // A broken or timed-out connection may hold half a reply: start afresh next time.
            self.connection = None;
        })?;
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
            for op in &step.ops {
                match op {
                    Op::Add {
                        key: name,
                        ttl_secs,
                        members,
                        trim_below,
                        ranges,
                        evidence,
                    } => {
                        args.text("A");
                        args.number(key(name));
                        args.number(ttl_secs.max(&1));
                        args.number(members.len());
                        for (score, member) in members {
                            args.number(score);
                            args.text(member);
                        }
                        match trim_below {
                            Some(bound) => args.number(bound),
                            None => args.text(""),
                        }
                        push_ranges(&mut args, ranges);
                        push_ranges(&mut args, evidence.as_ref().map_or(&[], |e| &e.ranges));
                        push_gate(&mut args, evidence.as_ref().map(|e| &e.gate));
                    }
                    Op::Tally {
                        key: name,
                        ttl_secs,
                        members,
                        top,
                        evidence,
                    } => {
                        args.text("T");
                        args.number(key(name));
                        args.number(ttl_secs.max(&1));
                        args.number(members.len());
                        for member in members {
                            args.text(member);
                        }
                        args.number(top);
                        push_gate(&mut args, evidence.as_ref());
                    }
                }
            }
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

/// Ranges as the script reads them: their number, then each one's bounds.
fn push_ranges(args: &mut Args, ranges: &[Range]) {
    args.number(ranges.len());
    for range in ranges {
        let (min, max) = bounds(*range);
        args.text(&min);
        args.text(&max);
    }
}

/// A gate as the script reads it: a letter, then its numbers; `-` for none.
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
    args.text(letter);
    for n in numbers {
        args.number(n);
    }
}

/// The bounds of `min <= score < max`, with the open ends as the infinities Redis reads (the
/// script makes the upper bound exclusive).
fn bounds(range: Range) -> (String, String) {
    let min = if range.min == i64::MIN {
        "-inf".to_string()
    } else {
        range.min.to_string()
    };
    let max = if range.max == i64::MAX {
        "+inf".to_string()
    } else {
        range.max.to_string()
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
            ("5".to_string(), "9".to_string())
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
