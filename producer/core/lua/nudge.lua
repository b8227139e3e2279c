--- KEYS: leases lanes[]
--- ARGV: member
-- Makes an unclaimed entry due now, wherever it is (a cancel: the step notices sooner). A
-- claimed one is left alone: its step is running and will place it by the record, which
-- already says cancelled.
pcall(redis.replicate_commands)
if redis.call('HEXISTS', KEY.leases, ARG.member) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, lane in ipairs(KEY.lanes) do
  if redis.call('ZSCORE', lane, ARG.member) then
    redis.call('ZADD', lane, 'XX', now, ARG.member)
    return 1
  end
end
return 0
