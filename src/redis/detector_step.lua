-- The detector step of a batch chunk; see detector_state.rs for the argument layout and why it
-- is shaped the way it is. Most of a call's cost used to be Lua interpreting, not Redis
-- working, so this script reads its arguments in place (no parsing pass, no table per
-- operation, member or range), takes range bounds and per-member range membership ready-made
-- from Rust, and writes its results as JSON text piece by piece instead of through cjson.
-- Every argument costs Redis a Lua string before the script starts, so operations are packed:
-- one shape number for kind and sizes, one bitmask per member, a gate or a list of evidence
-- bounds as one string (a gate's text repeats across orders and is parsed once per call;
-- evidence bounds are parsed only when the gate fires).
-- Numbers are read by arithmetic coercion (`ARGV[p] + 0`), which costs no function call.
local call = redis.call
local ARGV, KEYS = ARGV, KEYS
local find, sub, gmatch, concat = string.find, string.sub, string.gmatch, table.concat
local ceil = math.ceil
local encode = cjson.encode

local limit = ARGV[1]
local orders = ARGV[2] + 0
local out = {}
local refreshed = {}
-- Reused by every order: the counts before and after of the order's operations, flat (operation
-- i's ranges follow first[i]), how many ranges each has, the current add's members per range
-- that ZADD added, and the pieces of the encoded results.
local before, after, first, ranges = {}, {}, {}, {}
local delta = {}
local buf = {}
-- Operations of the current order whose counts a gate may read (results[op] in Gate::fires).
local done = 0

-- (before, after) of range `range` of operation `op` (both 0-based); 0, 0 for an operation not
-- applied yet or a range it does not have, as Gate::fires in state.rs reads them.
local function count(op, range)
  op = op + 1
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

-- A gate's text (`<letter> <number>...`, see push_gate) as { letter, numbers... }, parsed once
-- per call: the same few gates come back with every order.
local gates = {}
local function gate(text)
  local g = gates[text]
  if g == nil then
    g = {}
    local i = 0
    for w in gmatch(text, '%S+') do
      i = i + 1
      g[i] = (i == 1) and w or tonumber(w)
    end
    gates[text] = g
  end
  return g
end

-- Mirrors Gate::fires in state.rs.
local function fires(g)
  local t = g[1]
  if t == 'X' then
    local b, a = count(g[2], g[3])
    b = b - g[4]
    a = a - g[4]
    return crossed(b > 0 and b or 0, a > 0 and a or 0)
  elseif t == 'S' then
    local pb, pa = count(g[2], g[3])
    local tb, ta = count(g[4], g[5])
    local min_total, percent = g[6], g[7]
    if not (ta >= min_total and pa * 100 > percent * ta) then return false end
    return not (tb >= min_total and pb * 100 > percent * tb) or crossed(pb, pa)
  elseif t == 'P' then
    local ub, ua = count(g[2], g[3])
    local _, base = count(g[4], g[5])
    local buckets, factor, floor = g[6], g[7], g[8]
    if not (ua * buckets > factor * base and ua >= floor) then return false end
    return not (ub * buckets > factor * base and ub >= floor) or crossed(ub, ua)
  elseif t == 'E' then
    local db, da = count(g[2], g[3])
    local ub, ua = count(g[4], g[5])
    local min_distinct, min_unknown = g[6], g[7]
    if not (da >= min_distinct or ua >= min_unknown) then return false end
    return not (db >= min_distinct or ub >= min_unknown) or crossed(db, da)
  end
  return false
end

-- Appends values[from..to] to buf at n as a comma-separated list; returns the new end of buf.
local function append_list(n, values, from, to)
  for k = from, to do
    n = n + 1
    buf[n] = values[k]
    if k < to then
      n = n + 1
      buf[n] = ','
    end
  end
  return n
end

-- Bits per mask argument (see MASK_BITS in detector_state.rs): below 2^53, exact in a double.
local MASK_BITS = 50
local SHAPE = 1048576

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
      local shape = ARGV[pos] + 0
      local key = KEYS[ARGV[pos + 1] + 0]
      local ttl = ARGV[pos + 2]
      local grew = false
      if i > 1 then
        n = n + 1
        buf[n] = ','
      end
      first[i] = flat
      if shape >= 0 then
        -- An add: shape = members + SHAPE * ranges + SHAPE * SHAPE * merges.
        local members = shape % SHAPE
        local rest = (shape - members) / SHAPE
        local nr = rest % SHAPE
        local trim = ARGV[pos + 3]
        pos = pos + 4
        if rest >= SHAPE then
          -- The same set under the customer key being rotated out: merged in first, so its
          -- members count here once (a union is idempotent, so a redo counts the same). The
          -- union replaces the key, dropping its time to live: set it again at once.
          local from = KEYS[ARGV[pos] + 0]
          pos = pos + 1
          if call('EXISTS', from) == 1 then
            call('ZUNIONSTORE', key, 2, key, from, 'AGGREGATE', 'MIN')
            call('EXPIRE', key, ttl)
          end
        end
        if trim ~= '' then call('ZREMRANGEBYSCORE', key, '-inf', trim) end
        for j = 1, nr do delta[j] = 0 end
        -- Each member: score, member, then its ranges as bitmasks of MASK_BITS (bit j - 1 of
        -- the first for range j: whether the score is in it).
        local masks = ceil(nr / MASK_BITS)
        for m = 1, members do
          if call('ZADD', key, 'NX', ARGV[pos], ARGV[pos + 1]) == 1 then
            grew = true
            local j = 1
            for c = 1, masks do
              local bits = ARGV[pos + 1 + c] + 0
              local last = j + MASK_BITS - 1
              if last > nr then last = nr end
              while j <= last do
                local bit = bits % 2
                delta[j] = delta[j] + bit
                bits = (bits - bit) / 2
                j = j + 1
              end
            end
          end
          pos = pos + 2 + masks
        end
        ranges[i] = nr
        for j = 1, nr do
          local a = call('ZCOUNT', key, ARGV[pos], ARGV[pos + 1])
          pos = pos + 2
          flat = flat + 1
          after[flat] = a
          before[flat] = a - delta[j]
        end
        -- {"b":[..],"a":[..],"e":
        n = n + 1
        buf[n] = '{"b":['
        n = append_list(n, before, first[i] + 1, flat)
        n = n + 1
        buf[n] = '],"a":['
        n = append_list(n, after, first[i] + 1, flat)
        n = n + 1
        buf[n] = '],"e":['
      else
        -- A tally: shape = -1 - members.
        local members = -1 - shape
        pos = pos + 3
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
      if shape >= 0 then
        -- Evidence bounds as `<min> <max> <min> <max>...`, then the gate.
        local evidence = ARGV[pos]
        local text = ARGV[pos + 1]
        pos = pos + 2
        if text ~= '-' and fires(gate(text)) then
          local sep = ''
          for min, max in gmatch(evidence, '(%S+) (%S+)') do
            n = n + 1
            buf[n] = sep
            n = n + 1
            buf[n] = encode(call('ZRANGEBYSCORE', key, min, max, 'LIMIT', 0, limit))
            sep = ','
          end
        end
      else
        local stop = ARGV[pos]
        local text = ARGV[pos + 1]
        pos = pos + 2
        if text ~= '-' and fires(gate(text)) then
          n = n + 1
          buf[n] = encode(call('ZREVRANGE', key, 0, stop, 'WITHSCORES'))
        end
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
