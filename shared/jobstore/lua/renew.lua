-- KEYS: lease keys.  ARGV: lease ms, then one token per key.
-- Renews (PEXPIRE) each lease still held by its token; returns how many were renewed.
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    n = n + 1
  end
end
return n
