-- KEYS: batch hash.  ARGV: now, channel, batch id.
-- Returns 'cancelled' when this call cancelled it, 'ended:<status>', or '' when gone.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st ~= 'queued' and st ~= 'running' then return 'ended:' .. st end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'cancelled'
