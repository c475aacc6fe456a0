-- KEYS: job hashes, then (in the same order) their lease keys.
-- ARGV: now_iso, ttl, channel, running set, then per job 7 values: status, field ('outputs'
-- or 'error'), payload, webhook queue ('' for none), webhook message, predicted ('1' when
-- the worker ran predict for the job: counted in its 'predictions' field, finished or not),
-- and the job id.
-- A job is finished only while it is 'running'; returns 1 per job finished, 0 if discarded.
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local key = KEYS[i]
  local b = 4 + (i - 1) * 7
  local id = ARGV[b + 7]
  redis.call('ZREM', ARGV[4], id)
  if ARGV[b + 6] == '1' and redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'predictions', 1)
  end
  if redis.call('HGET', key, 'status') == 'running' then
    redis.call('HSET', key, 'status', ARGV[b + 1], 'finished_at', ARGV[1], ARGV[b + 2], ARGV[b + 3])
    redis.call('HDEL', key, 'inputs')
    redis.call('DEL', KEYS[n + i])
    redis.call('EXPIRE', key, ARGV[2])
    local ik = redis.call('HGET', key, 'idem')
    if ik then redis.call('EXPIRE', ik, ARGV[2]) end
    if ARGV[b + 4] ~= '' then redis.call('LPUSH', ARGV[b + 4], ARGV[b + 5]) end
    redis.call('PUBLISH', ARGV[3], id)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
