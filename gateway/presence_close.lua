-- presence_close: one stream of a user closed on this gateway.
--
-- KEYS[1] = online_key(user)    zset  stream ids -> expiry (ms)
-- KEYS[2] = presence_key(user)  hash  status, last_seen (ISO 8601)
-- ARGV[1] = the stream's member id, ARGV[2] = now (ms), ARGV[3] = now (ISO 8601),
-- ARGV[4] = how long an offline user's hash is kept (ms)
--
-- Removes the stream and the expired ones; when none is left the user goes offline. Returns 1
-- when the user just went offline, else 0.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'status', 'offline', 'last_seen', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
