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
-- ARGV[4]  msgpack [queues, entries, frames]
--   queues   = { {list_key, msgs_key, wake_channel}, ... }
--   entries  = { {"J", dedupe_key, queue_index, redis_message_id, message_json}
--              | {"F", dedupe_key, queue_index, identity, job_json, frame_index}
--              | {"D", dedupe_key, first_argv, count}, ... }
--   frames   = { {head, middle, between, tail}, ... }  (optional)
--   dedupe_key "" means no dedupe (core NATS: there is no redelivery to absorb).
--   "F" is "J" with the message built here: its redis message id is uuid5(identity) (the value of
--   bridge/messages.py message_id_for) and its JSON head .. job .. middle .. id .. between .. id .. tail
--   (bridge/messages.py Frame): SHA-1 and concatenation in C here cost a fraction of what they
--   cost in the bridge's Python, per event.
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
local frames = batch[3] or {}

-- bridge/messages.py MESSAGE_ID_NAMESPACE (6f0b3a1e-9d3c-5c7e-8a5f-0c1d2e3f4a5b), as bytes.
local UUID_NAMESPACE = "\111\011\058\030\157\060\092\126\138\095\012\029\046\063\074\091"
-- The RFC 4122 variant (10xx) applied to a hex digit of the hash.
local VARIANT = {["0"] = "8", ["1"] = "9", ["2"] = "a", ["3"] = "b", ["4"] = "8", ["5"] = "9", ["6"] = "a",
                 ["7"] = "b", ["8"] = "8", ["9"] = "9", ["a"] = "a", ["b"] = "b", ["c"] = "8", ["d"] = "9",
                 ["e"] = "a", ["f"] = "b"}

-- uuid.uuid5(namespace, identity) as text: SHA-1, version nibble 5, variant nibble.
local function uuid5(identity)
    local h = redis.sha1hex(UUID_NAMESPACE .. identity)
    return string.sub(h, 1, 8) .. "-" .. string.sub(h, 9, 12) .. "-5" .. string.sub(h, 14, 16) .. "-"
        .. VARIANT[string.sub(h, 17, 17)] .. string.sub(h, 18, 20) .. "-" .. string.sub(h, 21, 32)
end

local out = {}
local woken = {}

for i = 1, #entries do
    local e = entries[i]
    local dedupe = e[2]
    if dedupe ~= "" and redis.call("exists", dedupe) == 1 then
        out[i] = "0"
    else
        if e[1] ~= "D" then
            local q = queues[e[3]]
            local id, message = e[4], e[5]
            if e[1] == "F" then
                local f = frames[e[6]]
                id = uuid5(e[4])
                message = f[1] .. e[5] .. f[2] .. id .. f[3] .. id .. f[4]
            end
            redis.call("hset", q[2], id, message)
            redis.call("rpush", q[1], id)
            woken[e[3]] = (woken[e[3]] or 0) + 1
            if dedupe ~= "" then
                redis.call("set", dedupe, id, "EX", ttl)
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
