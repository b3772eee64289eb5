-- The decision store's step for one program (hash slot) and chunk of a batch; see
-- decision_store.rs. ARGV: the number of operations, then per operation its kind, the index of
-- its key in KEYS, the number of values that follow, and the values:
--   S ttl summary         keep the decision's summary unless the order has one (first wins)
--   A id request          append the adjustment request under its id unless the id is there
--   C summary counter ttl units field...
--                         HIGH_REVERSAL_RATE: credit a sale to its window (counter: an index
--                         into KEYS), once per order, if the stored summary is this one
--   R id counter ttl units order_id field...
--                         HIGH_REVERSAL_RATE: count a reversal in its sale's window, once per
--                         adjustment id, and only if the sale's credit was counted; a repeat
--                         gets the first count's record
-- An order's hash: s = summary, n = requests so far, e:<i> = request i, a:<id> = i of the id,
-- k = credit counted, v = counted as reversed, q:<id> = the counts adjustment id saw.
-- A window's hash (counter), per field f: f|n credited orders, f|a credited hundredths,
-- f|r reversed orders, f|ra reversed hundredths, f|e the first reversed order ids (JSON),
-- f|pn f|pa credited orders and hundredths as the last reversal saw them (what the share was
-- judged on then: credits move it between reversals).
-- Replies per operation: {'S', '1' if new else '0'}, {'N'} (no summary), {'L', summary,
-- request 1 .. request i} with i the position of the adjustment id's first request (so a repeat
-- or a replay of an adjustment is answered exactly as the first time), {'C'}, {'R', counts}.
-- Numbers stay strings (Lua's are doubles): counts are read back with HMGET, never formatted.
local call = redis.call
local EVIDENCE = 20
-- An overflowing count is left as it was rather than failing the script half way.
local function bump(key, field, by)
  redis.pcall('HINCRBY', key, field, by)
end
local n = tonumber(ARGV[1])
local pos = 2
local out = {}
for i = 1, n do
  local kind = ARGV[pos]
  local key = KEYS[tonumber(ARGV[pos + 1])]
  local v = pos + 3
  if kind == 'S' then
    local new = call('HSETNX', key, 's', ARGV[v + 1])
    if new == 1 then
      call('EXPIRE', key, ARGV[v])
    end
    out[i] = {'S', tostring(new)}
  elseif kind == 'A' then
    local id = 'a:' .. ARGV[v]
    local summary = call('HGET', key, 's')
    if not summary then
      out[i] = {'N'}
    else
      local at = call('HGET', key, id)
      if not at then
        at = call('HINCRBY', key, 'n', 1)
        call('HSET', key, 'e:' .. at, ARGV[v + 1], id, at)
      end
      at = tonumber(at)
      local fields = {}
      for j = 1, at do fields[j] = 'e:' .. j end
      local got = call('HMGET', key, unpack(fields))
      local reply = {'L', summary}
      for j = 1, at do reply[j + 2] = got[j] end
      out[i] = reply
    end
  elseif kind == 'C' then
    local counter = KEYS[tonumber(ARGV[v + 1])]
    if call('HGET', key, 's') == ARGV[v] and call('HSETNX', key, 'k', '1') == 1 then
      for j = v + 4, pos + 2 + tonumber(ARGV[pos + 2]) do
        bump(counter, ARGV[j] .. '|n', 1)
        bump(counter, ARGV[j] .. '|a', ARGV[v + 3])
      end
      call('EXPIRE', counter, ARGV[v + 2])
    end
    out[i] = {'C'}
  else
    local memo = 'q:' .. ARGV[v]
    local counter = KEYS[tonumber(ARGV[v + 1])]
    local record
    if call('HGET', key, 'k') ~= '1' then
      -- No credit counted for the sale (decided before the detector was on, or not CREDITED):
      -- its reversal would count against nothing.
      record = '[]'
    else
      record = call('HGET', key, memo)
    end
    if not record then
      local first = call('HSETNX', key, 'v', '1') == 1
      local rows = {}
      for j = v + 5, pos + 2 + tonumber(ARGV[pos + 2]) do
        local f = ARGV[j]
        local b = call('HMGET', counter, f .. '|r', f .. '|ra', f .. '|pn', f .. '|pa')
        if first then
          bump(counter, f .. '|r', 1)
          if tonumber(b[1] or '0') < EVIDENCE then
            local e = call('HGET', counter, f .. '|e') or '[]'
            local id = cjson.encode(ARGV[v + 4])
            if e == '[]' then
              e = '[' .. id .. ']'
            else
              e = string.sub(e, 1, -2) .. ',' .. id .. ']'
            end
            call('HSET', counter, f .. '|e', e)
          end
        end
        bump(counter, f .. '|ra', ARGV[v + 3])
        local a = call('HMGET', counter, f .. '|n', f .. '|a', f .. '|r', f .. '|ra', f .. '|e')
        call('HSET', counter, f .. '|pn', a[1] or '0', f .. '|pa', a[2] or '0')
        rows[#rows + 1] = '[' .. (a[1] or '0') .. ',' .. (a[2] or '0') .. ',' .. (b[3] or '0') ..
          ',' .. (b[4] or '0') .. ',' .. (b[1] or '0') .. ',' .. (b[2] or '0') .. ',' ..
          (a[3] or '0') .. ',' .. (a[4] or '0') .. ',' .. (a[5] or '[]') .. ']'
      end
      record = '[' .. table.concat(rows, ',') .. ']'
      call('HSET', key, memo, record)
      call('EXPIRE', counter, ARGV[v + 2])
    end
    out[i] = {'R', record}
  end
  pos = pos + 3 + tonumber(ARGV[pos + 2])
end
return out
