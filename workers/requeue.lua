-- Moves one job from dramatiq's dead-letter queue back to its queue, atomically and at most once.
--
-- KEYS[1] $ns:$queue.XQ          sorted set of dead message ids
-- KEYS[2] $ns:$queue.XQ.msgs     hash id -> message
-- KEYS[3] $ns:$queue.XQ.reasons  hash id -> why it failed (workers/dead_letter_queue.py)
-- KEYS[4] $ns:$queue             list of waiting ids (dramatiq's layout, as its "enqueue")
-- KEYS[5] $ns:$queue.msgs        hash id -> message
-- ARGV[1] the message id, ARGV[2] the message to enqueue (JSON), ARGV[3] the queue's wake channel
--
-- Returns 1 when moved, 0 when the id is no longer dead (replayed or purged already): a second
-- replay of the same record therefore enqueues nothing.

if redis.call("zrem", KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("hdel", KEYS[3], ARGV[1])
redis.call("hset", KEYS[5], ARGV[1], ARGV[2])
redis.call("rpush", KEYS[4], ARGV[1])
redis.call("publish", ARGV[3], 1)
return 1
