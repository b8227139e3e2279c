--- KEYS: letters letters_by_time
--- ARGV: webhook_id detail retention_ms cap
--- uses: redis_now
-- One dead letter, kept under its webhook-id; the oldest are dropped past the retention time
-- or past the cap, so a receiver that is gone for good cannot fill Redis.
local now_ms = math.floor(now * 1000)
redis.call('HSET', KEY.letters, ARG.webhook_id, ARG.detail)
redis.call('ZADD', KEY.letters_by_time, now_ms, ARG.webhook_id)
local old = redis.call('ZRANGEBYSCORE', KEY.letters_by_time, '-inf',
                       now_ms - tonumber(ARG.retention_ms))
local over = redis.call('ZCARD', KEY.letters_by_time) - #old - tonumber(ARG.cap)
if over > 0 then
  local oldest = redis.call('ZRANGE', KEY.letters_by_time, #old, #old + over - 1)
  for _, id in ipairs(oldest) do old[#old + 1] = id end
end
for _, id in ipairs(old) do
  redis.call('HDEL', KEY.letters, id)
  redis.call('ZREM', KEY.letters_by_time, id)
end
return #old
