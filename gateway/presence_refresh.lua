-- presence_refresh: extend the expiry of a user's streams on this gateway.
--
-- KEYS[1] = online_key(user)    zset  stream ids -> expiry (ms)
-- KEYS[2] = presence_key(user)  hash  status, last_seen (ISO 8601)
-- ARGV[1] = now (ms), ARGV[2] = the streams' new expiry (ms), ARGV[3] = the keys' TTL (ms),
-- ARGV[4] = now (ISO 8601), ARGV[5..] = the member ids of the user's streams here
--
-- Returns 1 when the hash had expired (a Redis restart, say) and the user is online again, else 0.
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local changed = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'status', 'online', 'last_seen', ARGV[4])
  changed = 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return changed
