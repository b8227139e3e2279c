--- KEYS: leases hastened lane
--- ARGV: member ttl_s
-- A provider's callback said the member's task ended: its next poll is due now. The mark
-- (when it came, by Redis's clock) outlives a step that holds the entry: that step's
-- placement into the poll lane sees a mark it did not read and makes the entry due now
-- (lua/place.lua), so a callback that lands while a poll is under way is not lost to its
-- backoff. Returns 1 (due now), 2 (held by a step: it will place it due now), 0 (no poll
-- entry yet: the submit that places it will).
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SET', KEY.hastened, string.format('%.6f', now), 'EX', ARG.ttl_s)
if redis.call('HEXISTS', KEY.leases, ARG.member) == 1 then return 2 end
if redis.call('ZSCORE', KEY.lane, ARG.member) then
  redis.call('ZADD', KEY.lane, 'XX', now, ARG.member)
  return 1
end
return 0
