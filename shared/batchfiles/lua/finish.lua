-- KEYS: batch hash, done-chunks set.
-- ARGV: chunk number, ok rows, failed rows, now, failure ('' none: JSON error), channel,
--       batch id, webhook queue ('' none), completed message, failed message.
-- Counts the chunk once; ends the batch when it was the last chunk or when it failed it.
-- Returns the batch's status afterwards, as 'now:<status>' when this call ended it.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st ~= 'running' and st ~= 'queued' then return st end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'done_rows', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed_rows', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
  redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(redis.call('HGET', KEYS[1], 'expires_at'))))
end
local final = ''
local msg = ''
if ARGV[5] ~= '' then
  final = 'failed'
  msg = ARGV[10]
  redis.call('HSET', KEYS[1], 'error', ARGV[5])
elseif tonumber(redis.call('HGET', KEYS[1], 'chunks_done')) >=
       tonumber(redis.call('HGET', KEYS[1], 'chunks_total')) then
  final = 'succeeded'
  msg = ARGV[9]
end
if final == '' then return 'running' end
redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[4])
if ARGV[8] ~= '' and msg ~= '' then redis.call('LPUSH', ARGV[8], msg) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 'now:' .. final
