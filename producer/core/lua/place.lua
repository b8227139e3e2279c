--- KEYS: leases faults hastened lanes[]
--- ARGV: member lane delay_s token keep_faults seen hasten_lane
-- Makes the member's entry due in delay_s in lanes[lane] (lane 0: the entry is done) and
-- removes it from every other lane. With a token, only the claim that holds the entry may
-- place it: a step that lost its lease (it ran past it and someone else claimed the entry)
-- leaves the schedule to the newer claim, which reads the record and routes by it. A
-- placement is a step that completed, which ends a run of faults (FAULT_MAX_ATTEMPTS counts
-- them in a row), except the retry of a fault itself (keep_faults '1'). An entry placed in
-- the poll lane (hasten_lane) while a callback's mark is there that the placing step did not
-- see (seen: the mark it read, '' if none) is due now: the callback came while it ran.
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local member, target, token = ARG.member, tonumber(ARG.lane), ARG.token
if token ~= '' and redis.call('HGET', KEY.leases, member) ~= token then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = now + tonumber(ARG.delay_s)
if target == tonumber(ARG.hasten_lane) then
  local mark = redis.call('GET', KEY.hastened)
  if mark and mark ~= ARG.seen then due = now end
end
for i, lane in ipairs(KEY.lanes) do
  if i ~= target then redis.call('ZREM', lane, member) end
end
if target > 0 then
  redis.call('ZADD', KEY.lanes[target], due, member)
end
if target == 0 or ARG.keep_faults ~= '1' then
  redis.call('HDEL', KEY.faults, member)
end
redis.call('HDEL', KEY.leases, member)
return 1
