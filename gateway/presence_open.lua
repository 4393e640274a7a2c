-- presence_open: one stream of a user opened on this gateway.
--
-- KEYS[1] = online_key(user)    zset  stream ids (this gateway's and others') -> expiry (ms)
-- KEYS[2] = presence_key(user)  hash  status, last_seen (ISO 8601)
-- ARGV[1] = the stream's member id, ARGV[2] = now (ms), ARGV[3] = its expiry (ms),
-- ARGV[4] = the keys' TTL (ms), ARGV[5] = now (ISO 8601)
--
-- Drops expired streams, adds this one, and marks the user online when it had no live stream
-- (or its hash expired). Returns 1 when the user just came online, else 0.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local changed = 0
if before == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'status', 'online', 'last_seen', ARGV[5])
  changed = 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return changed
