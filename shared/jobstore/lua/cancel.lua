-- KEYS: job hash, queued-rows counter, running set, queued index, unqueued mark.
-- ARGV: now_iso, channel, job_id, result ttl, pending ttl.
-- Returns 'cancelled' when this call cancelled it, 'ended:<status>' when it had already ended
-- (cancelled included), or '' when the job does not exist.
-- A queued job's rows leave the backpressure counter here, at once. Its message is still in
-- the queue, and the record may expire (result TTL) before a worker takes the message: the
-- mark (Keys.unqueued, as long as an unfinished job may live) tells the claim not to take
-- the rows off a second time.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st ~= 'queued' and st ~= 'running' then return 'ended:' .. st end
if st == 'queued' then
  redis.call('DECRBY', KEYS[2], redis.call('HGET', KEYS[1], 'n_inputs'))
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[5])
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'inputs')
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local ik = redis.call('HGET', KEYS[1], 'idem')
if ik then redis.call('EXPIRE', ik, ARGV[4]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'cancelled'
