-- `now` by Redis's clock (seconds). Redis < 7 needs replicate_commands for TIME before writes.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
