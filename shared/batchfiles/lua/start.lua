-- KEYS: batch hash.  ARGV: now.  Returns the status a chunk (or the split) may run under:
-- 'running' (go on), or a terminal status / '' (gone): stop.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  return 'running'
end
return st
