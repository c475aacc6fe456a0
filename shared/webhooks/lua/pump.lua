-- KEYS: due zset, webhook queue.  ARGV: now, lease_until, then (member, message) pairs.
-- Publishes each member that is still due and re-scores it at the lease; returns how many.
local n = 0
for i = 3, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
