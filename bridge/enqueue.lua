-- The bridge's batch enqueue: one round trip, atomic per event, idempotent.
--
-- Writes dramatiq's own Redis layout (dramatiq/brokers/redis/dispatch.lua, "enqueue"):
--   $namespace:$queue        list  redis message ids, waiting
--   $namespace:$queue.msgs   hash  redis message id -> encoded message (JSON)
-- so a stock dramatiq RedisBroker consumer reads the jobs. Key names are computed by the
-- caller (bridge/enqueue.py), which owns the contract; nothing here knows a prefix.
--
-- ARGV[1]  dedupe window, seconds: how long an event's marker blocks a second enqueue
-- ARGV[2]  dead-letter stream key
-- ARGV[3]  dead-letter stream max length (exact MAXLEN)
-- ARGV[4]  msgpack [queues, entries]
--   queues   = { {list_key, msgs_key, wake_channel}, ... }
--   entries  = { {"J", dedupe_key, queue_index, redis_message_id, message_json}
--              | {"D", dedupe_key, first_argv, count}, ... }
--   dedupe_key "" means no dedupe (core NATS: there is no redelivery to absorb).
-- ARGV[5..] the dead letters' alternating field names and values; entry "D" names its slice.
--   (Raw payloads may be any bytes, and Redis' cmsgpack has no msgpack "bin" type: strings only.)
--
-- Returns one character per entry: "1" written, "0" already written within the window.
--
-- Order per event: check the marker, write, then set the marker. If the script fails half
-- way (OOM, ...), the retry may enqueue an event twice but can never skip one.

local ttl = ARGV[1]
local dl_key = ARGV[2]
local dl_max = ARGV[3]
local batch = cmsgpack.unpack(ARGV[4])
local queues = batch[1]
local entries = batch[2]

local out = {}
local woken = {}

for i = 1, #entries do
    local e = entries[i]
    local dedupe = e[2]
    if dedupe ~= "" and redis.call("exists", dedupe) == 1 then
        out[i] = "0"
    else
        if e[1] == "J" then
            local q = queues[e[3]]
            redis.call("hset", q[2], e[4], e[5])
            redis.call("rpush", q[1], e[4])
            woken[e[3]] = (woken[e[3]] or 0) + 1
            if dedupe ~= "" then
                redis.call("set", dedupe, e[4], "EX", ttl)
            end
        else
            redis.call("xadd", dl_key, "MAXLEN", dl_max, "*", unpack(ARGV, e[3], e[3] + e[4] - 1))
            if dedupe ~= "" then
                redis.call("set", dedupe, "dead-letter", "EX", ttl)
            end
        end
        out[i] = "1"
    end
end

-- Wake idle workers blocked on the queue's channel (events/inbox.py wake_channel): payload = count.
for index, count in pairs(woken) do
    redis.call("publish", queues[index][3], count)
end

return table.concat(out)
