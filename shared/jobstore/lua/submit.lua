-- KEYS: job, idempotency ("" for none), queue list, queued-rows counter, model seq, drain,
--       queued index
-- ARGV: job_id, pending ttl, message, n_rows, fingerprint, max_queued_rows, oldest drain
--       bucket, now_unix, field1, value1, ...
-- An unfinished job lives for the pending ttl (a safety net, PREDQ_MAX_JOB_AGE_S); the result
-- TTL starts when it ends. The idempotency key lives as long as its job.
-- Returns {job_id, fingerprint}: the new job's, or the one already created for that key; or
-- {'', 'full', queued_rows, rows_drained_in_window} when the model's queue is full.
-- A submit retried after its reply was lost (predq.api.jobstore retries once when Redis
-- closed the connection) finds its own job: nothing is written or published twice.
if redis.call('EXISTS', KEYS[1]) == 1 then return {ARGV[1], ARGV[5]} end
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
if queued > 0 and queued + tonumber(ARGV[4]) > tonumber(ARGV[6]) then
  local drained = 0
  local buckets = redis.call('HGETALL', KEYS[6])
  for i = 1, #buckets, 2 do
    if tonumber(buckets[i]) >= tonumber(ARGV[7]) then
      drained = drained + tonumber(buckets[i + 1])
    end
  end
  return {'', 'full', tostring(queued), tostring(drained)}
end
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[2])
end
local fields = {'seq', redis.call('INCR', KEYS[5])}
if KEYS[2] ~= '' then fields[3] = 'idem'; fields[4] = KEYS[2] end
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('INCRBY', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[1])
return {ARGV[1], ARGV[5]}
