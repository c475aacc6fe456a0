-- KEYS: batch hash, idempotency key ('' none), owner's index, lane queue, expiry index
-- ARGV: batch_id, expire_at (unix int), message, fingerprint, created_at, field/value...
-- Returns {batch_id, fingerprint}: the new one's, or the one created for that key before.
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[4], 'EXAT', ARGV[2])
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('LPUSH', KEYS[4], ARGV[3])
return {ARGV[1], ARGV[4]}
