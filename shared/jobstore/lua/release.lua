-- KEYS: lease keys.  ARGV: one token per key.
-- Deletes each lease still held by its token (its delivery gave the job back); returns how
-- many were held.
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
