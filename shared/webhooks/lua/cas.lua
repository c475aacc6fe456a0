-- KEYS: job hash, due zset, dead zset, webhook queue
-- ARGV: expected state ('' = none yet), new state, due member, due ('' remove, '-' keep,
--       else a score), dead action ('add' | 'rem' | 'keep'), job id, now, message ('' none)
-- Returns 1 when written, 0 when the state changed meanwhile, -1 when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[6])
  return -1
end
if (redis.call('HGET', KEYS[1], 'webhook_state') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[2])
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[3])
elseif ARGV[4] ~= '-' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end
if ARGV[5] == 'add' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
elseif ARGV[5] == 'rem' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if ARGV[8] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[8]) end
return 1
