-- The decision store's step for one program (hash slot) and chunk of a batch; see
-- decision_store.rs. ARGV: the number of operations, then per operation its kind, the index of
-- its key in KEYS and two or three values:
--   S ttl summary         keep the decision's summary unless the order has one (first wins)
--   A id request          append the adjustment request under its id unless the id is there
-- An order's hash: s = summary, n = requests so far, e:<i> = request i, a:<id> = i of the id.
-- Replies per operation: {'S'}, {'N'} (no summary), or {'L', summary, request 1 .. request i}
-- with i the position of the adjustment id's first request, so a repeat or a replay of an
-- adjustment is answered exactly as the first time.
local call = redis.call
local n = tonumber(ARGV[1])
local pos = 2
local out = {}
for i = 1, n do
  local kind = ARGV[pos]
  local key = KEYS[tonumber(ARGV[pos + 1])]
  if kind == 'S' then
    if call('HSETNX', key, 's', ARGV[pos + 3]) == 1 then
      call('EXPIRE', key, ARGV[pos + 2])
    end
    out[i] = {'S'}
  else
    local id = 'a:' .. ARGV[pos + 2]
    local summary = call('HGET', key, 's')
    if not summary then
      out[i] = {'N'}
    else
      local at = call('HGET', key, id)
      if not at then
        at = call('HINCRBY', key, 'n', 1)
        call('HSET', key, 'e:' .. at, ARGV[pos + 3], id, at)
      end
      at = tonumber(at)
      local fields = {}
      for j = 1, at do fields[j] = 'e:' .. j end
      local got = call('HMGET', key, unpack(fields))
      local reply = {'L', summary}
      for j = 1, at do reply[j + 2] = got[j] end
      out[i] = reply
    end
  end
  pos = pos + 4
end
return out
