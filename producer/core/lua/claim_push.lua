-- Leases the chosen entries (claim.lua, claim_submit.lua) and pushes their Celery messages,
-- per entries each: every entry's score moves to until_ and the leases hash notes the claim's
-- token (an entry noted there already is a recovery: its last claim never finished). late:
-- how late each was picked up. Returns what a claim returns: the entries claimed, their total
-- and their worst lateness in milliseconds.
local function push(chosen, late, per, until_)
  for g = 1, #chosen, per do
    local token = ARG.token_prefix .. redis.call('INCR', KEY.claim_seq)
    local members, recovered = {}, {}
    for i = g, math.min(g + per - 1, #chosen) do
      local m = chosen[i]
      if redis.call('HEXISTS', KEY.leases, m) == 1 then
        recovered[#recovered + 1] = cjson.encode(m)
      end
      redis.call('HSET', KEY.leases, m, token)
      redis.call('ZADD', KEY.lane, 'XX', until_, m)
      members[#members + 1] = cjson.encode(m)
    end
    local body = '[[[' .. table.concat(members, ',') .. '],"' .. token .. '",'
      .. cjson.encode(ARG.lane_name) .. ',[' .. table.concat(recovered, ',') .. ']],{},'
      .. '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
    local e = ARG.envelope
    redis.call('LPUSH', KEY.queue, e[1] .. cjson.encode(body) .. e[2] .. token .. e[3] .. token
      .. e[4] .. token .. e[5] .. token .. e[6])
  end
  local total, worst = 0, 0
  for _, l in ipairs(late) do
    total = total + l
    if l > worst then worst = l end
  end
  return {#chosen, math.floor(total * 1000), math.floor(worst * 1000)}
end
