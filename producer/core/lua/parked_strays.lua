-- Parked entries (claim.lua, claim_submit.lua): an entry in the parked band of KEY.lane
-- that nothing a claim reads now notes (a provider's limits or key changed, fair share was
-- switched since it was parked) would wait for ever. unpark_strays(noted): at each claim two
-- parked entries, picked by the clock's microseconds, go back to the due range unless
-- noted(member) says something still holds them.
local function unpark_strays(noted)
  local band = tonumber(ARG.parked_band)
  for _, pick_at in ipairs({tonumber(t[2]), math.floor(tonumber(t[2]) / 7)}) do
    local parked_n = redis.call('ZCOUNT', KEY.lane, band, '+inf')
    if parked_n == 0 then return end
    local rank = redis.call('ZCARD', KEY.lane) - parked_n + pick_at % parked_n
    local got = redis.call('ZRANGE', KEY.lane, rank, rank, 'WITHSCORES')
    if got[1] and tonumber(got[2]) >= band and not noted(got[1]) then
      redis.call('ZADD', KEY.lane, 'XX', tonumber(got[2]) - band, got[1])
    end
  end
end
