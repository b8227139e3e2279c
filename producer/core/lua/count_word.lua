--- KEYS: words
--- ARGV: word other cap
-- Count a status word no vocabulary knew. Words come from the provider: past `cap` distinct
-- ones the rest are counted together (under `other`), so a provider inventing words cannot
-- grow the hash without end.
if redis.call('HEXISTS', KEY.words, ARG.word) == 1
    or redis.call('HLEN', KEY.words) < tonumber(ARG.cap) then
  return redis.call('HINCRBY', KEY.words, ARG.word, 1)
end
return redis.call('HINCRBY', KEY.words, ARG.other, 1)
