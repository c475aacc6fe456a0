-- KEYS: the batch's job hashes, then (in the same order) their lease keys, then their
--       unqueued marks (set when a queued job was cancelled).
-- ARGV: now_iso, now_unix, max_deliveries, channel, running set, result ttl, queued index,
--       lease ms, then per job its model's queued-rows counter, claimed-seq key, row count,
--       the delivery's lease token and the job id.
-- For each job returns {code, inputs, webhook[, created_at]}: code is 'ok' (claimed; now
-- running, its lease held by this token; created_at gives the worker the queue wait for
-- predq_queue_wait_seconds), or the reason it is skipped: 'missing', a terminal status,
-- 'expired' (deadline passed), 'poison', or 'leased' (a duplicate: another delivery holds
-- the job's live lease and is predicting it; not predicted, not counted as a delivery).
-- A running job whose lease is gone (its worker died) or is held by this same token (the
-- consumer re-runs a batch whose pool process died) is a real redelivery: counted.
local out = {}
local n = #KEYS / 3
local function job_id(i) return ARGV[8 + 5 * (i - 1) + 5] end
local function ended(i, status, err)
  local key = KEYS[i]
  local id = job_id(i)
  redis.call('HSET', key, 'status', status, 'finished_at', ARGV[1], 'error', err)
  redis.call('HDEL', key, 'inputs')
  redis.call('DEL', KEYS[n + i])
  redis.call('ZREM', ARGV[5], id)
  redis.call('EXPIRE', key, ARGV[6])
  local ik = redis.call('HGET', key, 'idem')
  if ik then redis.call('EXPIRE', ik, ARGV[6]) end
  redis.call('PUBLISH', ARGV[4], id)
end
-- Why a job is failed after too many deliveries: its worker died each time, or (counted by
-- predq.worker.store_failures) Redis failed after the claim, so the result could not be stored.
local function poison_error(key, tries)
  local sf = tonumber(redis.call('HGET', key, 'store_failures') or '0')
  if sf == 0 then
    return '{"type":"PoisonJob","message":"delivered ' .. tries ..
      ' times without finishing (its worker died each time); not retried again"}'
  end
  local msg = 'the result could not be stored: Redis failed ' .. sf ..
    ' time(s) after the job was claimed (last: ' ..
    (redis.call('HGET', key, 'store_error') or '?') .. ')'
  if tries > sf then
    msg = msg .. '; ' .. (tries - sf) ..
      ' other delivery(ies) ended without a result (a worker died)'
  end
  return cjson.encode({type = 'ResultNotStored',
                       message = msg .. '; delivered ' .. tries .. ' times, not retried again'})
end
for i = 1, n do
  local key = KEYS[i]
  local b = 8 + 5 * (i - 1)
  local qrows, claimed, token, id = ARGV[b + 1], ARGV[b + 2], ARGV[b + 4], ARGV[b + 5]
  local st = redis.call('HGET', key, 'status')
  -- a job cancelled while queued had its rows taken off then (see the cancel script's mark)
  local unqueued = KEYS[2 * n + i]
  if not st then
    -- gone before it ran (past PREDQ_MAX_JOB_AGE_S, or cancelled and past the result TTL):
    -- its rows no longer wait, unless the cancel already took them off
    if redis.call('DEL', unqueued) == 0 and
        tonumber(redis.call('DECRBY', qrows, ARGV[b + 3])) < 0 then
      redis.call('SET', qrows, 0)
    end
    out[i] = {'missing', '', ''}
  elseif st ~= 'queued' and st ~= 'running' then
    if st == 'cancelled' then redis.call('DEL', unqueued) end
    out[i] = {st, '', ''}
  elseif st == 'running' and (redis.call('GET', KEYS[n + i]) or token) ~= token then
    out[i] = {'leased', '', ''}
  else
    if st == 'queued' then
      redis.call('DECRBY', qrows, redis.call('HGET', key, 'n_inputs'))
      redis.call('ZREM', ARGV[7], id)
      local seq = tonumber(redis.call('HGET', key, 'seq') or '0')
      if seq > tonumber(redis.call('GET', claimed) or '0') then redis.call('SET', claimed, seq) end
    end
    local deadline = redis.call('HGET', key, 'cancel_after')
    local d = redis.call('HINCRBY', key, 'deliveries', 1)
    if st == 'queued' and deadline and tonumber(ARGV[2]) > tonumber(deadline) then
      ended(i, 'expired', '{"type":"Expired","message":"cancel_after passed while queued"}')
      out[i] = {'expired', '', ''}
    elseif d > tonumber(ARGV[3]) then
      ended(i, 'failed', poison_error(key, d - 1))
      out[i] = {'poison', '', ''}
    else
      if st == 'queued' then
        redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1])
      end
      redis.call('SET', KEYS[n + i], token, 'PX', ARGV[8])
      redis.call('ZADD', ARGV[5], ARGV[2], id)
      local f = redis.call('HMGET', key, 'inputs', 'webhook', 'created_at')
      out[i] = {'ok', f[1] or '', f[2] or '', f[3] or ''}
    end
  end
end
return out
