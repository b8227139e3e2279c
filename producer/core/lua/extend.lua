--- KEYS: lane leases owners slots[]
--- ARGV: lease_s token tenant_prefix members[]
-- Extends the members still held by this token (a member the step already placed elsewhere
-- is no longer held), and the provider slot a submit holds under its lease (never shortening
-- a generation's), wherever it is held: slots are every account's; and the slot its tenant
-- counts it in (owners: job -> tenant, lua/claim_submit.lua).
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARG.lease_s)
local n = 0
for _, m in ipairs(ARG.members) do
  if redis.call('HGET', KEY.leases, m) == ARG.token then
    redis.call('ZADD', KEY.lane, 'XX', 'GT', until_, m)
    for _, slots in ipairs(KEY.slots) do redis.call('ZADD', slots, 'XX', 'GT', until_, m) end
    local tenant = redis.call('HGET', KEY.owners, m)
    if tenant then
      redis.call('ZADD', ARG.tenant_prefix .. tenant .. ':in_flight', 'XX', 'GT', until_, m)
    end
    n = n + 1
  end
end
return n
