-- The detector step of a batch chunk; see detector_state.rs for the argument layout and why it
-- is shaped the way it is. Most of a call's cost used to be Lua interpreting, not Redis
-- working, so this script reads its arguments in place (no parsing pass, no table per
-- operation, member or range), takes range bounds and per-member range membership ready-made
-- from Rust, and writes its results as JSON text piece by piece instead of through cjson.
-- Numbers are read by arithmetic coercion (`ARGV[p] + 0`), which costs no function call.
local call = redis.call
local ARGV, KEYS = ARGV, KEYS
local find, sub, concat = string.find, string.sub, table.concat
local encode = cjson.encode

local limit = ARGV[1]
local orders = ARGV[2] + 0
local out = {}
local refreshed = {}
-- Reused by every order: the counts before and after of the order's operations, flat (operation
-- i's ranges follow first[i]), how many ranges each has, which members ZADD added, and the
-- pieces of the encoded results.
local before, after, first, ranges = {}, {}, {}, {}
local added = {}
local buf = {}
-- Operations of the current order whose counts a gate may read (results[op] in Gate::fires).
local done = 0

-- (before, after) of range `range` of operation `op` (both 0-based, as ARGV text); 0, 0 for an
-- operation not applied yet or a range it does not have, as Gate::fires in state.rs reads them.
local function count(op, range)
  op = op + 1
  range = range + 0
  if op > done or range >= ranges[op] then return 0, 0 end
  local k = first[op] + range + 1
  return before[k], after[k]
end

-- Whether a power of two lies in (b, a].
local function crossed(b, a)
  if a <= b then return false end
  local p = 1
  while p <= b do p = p * 2 end
  return p <= a
end

-- Numbers after each gate letter.
local arity = { X = 3, S = 6, P = 7, E = 6 }

-- Mirrors Gate::fires in state.rs; the gate's numbers are ARGV[p], ARGV[p + 1], ...
local function fires(t, p)
  if t == 'X' then
    local b, a = count(ARGV[p], ARGV[p + 1])
    local l = ARGV[p + 2] + 0
    b = b - l
    a = a - l
    return crossed(b > 0 and b or 0, a > 0 and a or 0)
  elseif t == 'S' then
    local pb, pa = count(ARGV[p], ARGV[p + 1])
    local tb, ta = count(ARGV[p + 2], ARGV[p + 3])
    local min_total, percent = ARGV[p + 4] + 0, ARGV[p + 5] + 0
    if not (ta >= min_total and pa * 100 > percent * ta) then return false end
    return not (tb >= min_total and pb * 100 > percent * tb) or crossed(pb, pa)
  elseif t == 'P' then
    local ub, ua = count(ARGV[p], ARGV[p + 1])
    local _, base = count(ARGV[p + 2], ARGV[p + 3])
    local buckets, factor, floor = ARGV[p + 4] + 0, ARGV[p + 5] + 0, ARGV[p + 6] + 0
    if not (ua * buckets > factor * base and ua >= floor) then return false end
    return not (ub * buckets > factor * base and ub >= floor) or crossed(ub, ua)
  elseif t == 'E' then
    local db, da = count(ARGV[p], ARGV[p + 1])
    local ub, ua = count(ARGV[p + 2], ARGV[p + 3])
    local min_distinct, min_unknown = ARGV[p + 4] + 0, ARGV[p + 5] + 0
    if not (da >= min_distinct or ua >= min_unknown) then return false end
    return not (db >= min_distinct or ub >= min_unknown) or crossed(db, da)
  end
  return false
end

local pos = 3
for o = 1, orders do
  local memo = KEYS[ARGV[pos] + 0]
  local fingerprint = ARGV[pos + 1]
  local memo_ttl = ARGV[pos + 2]
  local nops = ARGV[pos + 3] + 0
  local skip = ARGV[pos + 4] + 0
  pos = pos + 5
  local stored = call('GET', memo)
  if stored then
    local nl = find(stored, '\n', 1, true)
    if nl and sub(stored, 1, nl - 1) == fingerprint then
      out[o] = 'R' .. sub(stored, nl + 1)
    else
      out[o] = 'D'
    end
    pos = pos + skip
  else
    local n = 1
    buf[1] = '['
    local flat = 0
    for i = 1, nops do
      local kind = ARGV[pos]
      local key = KEYS[ARGV[pos + 1] + 0]
      local ttl = ARGV[pos + 2]
      local members = ARGV[pos + 3] + 0
      local grew = false
      if i > 1 then
        n = n + 1
        buf[n] = ','
      end
      first[i] = flat
      if kind == 'A' then
        local nr = ARGV[pos + 4] + 0
        local trim = ARGV[pos + 5]
        pos = pos + 6
        if trim ~= '' then call('ZREMRANGEBYSCORE', key, '-inf', trim) end
        -- Each member: score, member, then one 0/1 per range (whether the score is in it).
        local flags = pos + 1
        local stride = 2 + nr
        for m = 1, members do
          local new = call('ZADD', key, 'NX', ARGV[pos], ARGV[pos + 1]) == 1
          added[m] = new
          if new then grew = true end
          pos = pos + stride
        end
        ranges[i] = nr
        for j = 1, nr do
          local a = call('ZCOUNT', key, ARGV[pos], ARGV[pos + 1])
          pos = pos + 2
          local d = 0
          if grew then
            local f = flags + j
            for m = 1, members do
              if added[m] then d = d + ARGV[f] end
              f = f + stride
            end
          end
          flat = flat + 1
          after[flat] = a
          before[flat] = a - d
        end
        -- {"b":[..],"a":[..],"e":
        n = n + 1
        buf[n] = '{"b":['
        for k = first[i] + 1, flat do
          n = n + 1
          buf[n] = before[k]
          if k < flat then
            n = n + 1
            buf[n] = ','
          end
        end
        n = n + 1
        buf[n] = '],"a":['
        for k = first[i] + 1, flat do
          n = n + 1
          buf[n] = after[k]
          if k < flat then
            n = n + 1
            buf[n] = ','
          end
        end
        n = n + 1
        buf[n] = '],"e":['
      else
        pos = pos + 4
        for m = 1, members do
          call('ZINCRBY', key, 1, ARGV[pos])
          pos = pos + 1
        end
        grew = members > 0
        ranges[i] = 0
        n = n + 1
        buf[n] = '{"b":[],"a":[],"e":['
      end
      -- A key's time to live is refreshed once per call: it only collects garbage, and the
      -- orders of one call are milliseconds apart.
      if grew and not refreshed[key] then
        call('EXPIRE', key, ttl)
        refreshed[key] = true
      end
      done = i
      if kind == 'A' then
        local evidence = ARGV[pos] + 0
        local bounds = pos + 1
        pos = bounds + 2 * evidence
        local t = ARGV[pos]
        if t ~= '-' and fires(t, pos + 1) then
          for j = 1, evidence do
            if j > 1 then
              n = n + 1
              buf[n] = ','
            end
            n = n + 1
            buf[n] = encode(call('ZRANGEBYSCORE', key, ARGV[bounds], ARGV[bounds + 1], 'LIMIT', 0, limit))
            bounds = bounds + 2
          end
        end
        pos = pos + 1 + (arity[t] or 0)
      else
        local stop = ARGV[pos]
        local t = ARGV[pos + 1]
        if t ~= '-' and fires(t, pos + 2) then
          n = n + 1
          buf[n] = encode(call('ZREVRANGE', key, 0, stop, 'WITHSCORES'))
        end
        pos = pos + 2 + (arity[t] or 0)
      end
      n = n + 1
      buf[n] = ']}'
    end
    done = 0
    n = n + 1
    buf[n] = ']'
    local encoded = concat(buf, '', 1, n)
    call('SET', memo, fingerprint .. '\n' .. encoded, 'EX', memo_ttl)
    out[o] = 'N' .. encoded
  end
end
return out
