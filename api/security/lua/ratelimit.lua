-- KEYS: one fixed-window counter per limit (expires with its window)
-- ARGV: per limit, three values: tokens asked (the lease), window seconds, limit
-- Takes up to the tokens asked from each counter, never past its limit, and starts the
-- window (EXPIRE) when the counter is new.
-- Returns per limit, two values: tokens granted (0: the limit is spent for this window),
-- milliseconds until the window resets.
local out = {}
for i = 1, #KEYS do
  local ask = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local limit = tonumber(ARGV[3 * i])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local granted = math.max(0, math.min(ask, limit - used))
  if granted > 0 then
    redis.call('INCRBY', KEYS[i], granted)
  end
  local pttl = redis.call('PTTL', KEYS[i])
  if pttl < 0 then
    redis.call('EXPIRE', KEYS[i], window)
    pttl = window * 1000
  end
  out[#out + 1] = granted
  out[#out + 1] = pttl
end
return out
