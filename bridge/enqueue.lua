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
--              | {"D", dedupe_key, argv_index, 1}, ... }
--   dedupe_key "" means no dedupe (core NATS: there is no redelivery to absorb).
-- ARGV[5..] one per dead letter: its alternating field names and values, each "<length>:<bytes>"
--   (bridge/enqueue.py pack_fields). Raw payloads may be any bytes, and Redis' cmsgpack has no
--   msgpack "bin" type; one argument per dead letter, not one per field, because the client packs
--   each argument in Python.
--
-- Returns one character per entry: "1" written, "0" already written within the window (or
-- earlier in this batch: a second copy of an event in one batch is written once).
--
-- Order for the batch: read the markers, write, then set the markers. If the script fails half
-- way (OOM, ...), the retry may enqueue an event twice but can never skip one.
--
-- Redis runs this script while every other client waits, and its time is on the bridge's path
-- (the next batch is enqueued after this one answered), so it costs few calls per event: one
-- MGET for all markers, one HSET and one RPUSH per queue for all jobs (in entry order), then
-- one SET per marker (a marker has its own expiry: no multi-key command sets one).

local ttl = ARGV[1]
local dl_key = ARGV[2]
local dl_max = ARGV[3]
local batch = cmsgpack.unpack(ARGV[4])
local queues = batch[1]
local entries = batch[2]

-- Arguments per variadic call: unpack() puts them all on Lua's C stack (LUAI_MAXCSTACK 8000).
local CHUNK = 1000

local function call_chunked(command, key, args, step)
    for first = 1, #args, step do
        redis.call(command, key, unpack(args, first, math.min(first + step - 1, #args)))
    end
end

-- A dead letter's fields from its one argument: "<length>:<bytes>" each.
local function dead_letter_fields(packed)
    local out, pos = {}, 1
    while pos <= #packed do
        local colon = string.find(packed, ":", pos, true)
        local length = tonumber(string.sub(packed, pos, colon - 1))
        out[#out + 1] = string.sub(packed, colon + 1, colon + length)
        pos = colon + length + 1
    end
    return out
end

-- 1. Which events were written before: one MGET over every marker of the batch.
local marker_keys = {}
local marker_entry = {}
for i = 1, #entries do
    local dedupe = entries[i][2]
    if dedupe ~= "" then
        marker_keys[#marker_keys + 1] = dedupe
        marker_entry[#marker_keys] = i
    end
end
local written_before = {}
for first = 1, #marker_keys, CHUNK do
    local last = math.min(first + CHUNK - 1, #marker_keys)
    local values = redis.call("mget", unpack(marker_keys, first, last))
    for j = 1, #values do
        if values[j] then
            written_before[marker_entry[first + j - 1]] = true
        end
    end
end

-- 2. Write what is new, collecting the jobs per queue in entry order; dead letters go one by one.
local out = {}
local seen = {}
local fields = {}   -- per queue index: id, message, id, message, ...
local ids = {}      -- per queue index: id, id, ...
local markers = {}  -- marker key, value, marker key, value, ...
for i = 1, #entries do
    local e = entries[i]
    local dedupe = e[2]
    if written_before[i] or (dedupe ~= "" and seen[dedupe]) then
        out[i] = "0"
    else
        local value
        if e[1] == "J" then
            local q = e[3]
            if not fields[q] then
                fields[q], ids[q] = {}, {}
            end
            local f = fields[q]
            f[#f + 1] = e[4]
            f[#f + 1] = e[5]
            ids[q][#ids[q] + 1] = e[4]
            value = e[4]
        else
            redis.call("xadd", dl_key, "MAXLEN", dl_max, "*", unpack(dead_letter_fields(ARGV[e[3]])))
            value = "dead-letter"
        end
        if dedupe ~= "" then
            seen[dedupe] = true
            markers[#markers + 1] = dedupe
            markers[#markers + 1] = value
        end
        out[i] = "1"
    end
end
for q, f in pairs(fields) do
    call_chunked("hset", queues[q][2], f, CHUNK)
    call_chunked("rpush", queues[q][1], ids[q], CHUNK)
end

-- 3. Only now the markers: a failure above leaves none, so the retry writes everything again.
for m = 1, #markers, 2 do
    redis.call("set", markers[m], markers[m + 1], "EX", ttl)
end

-- Wake idle workers blocked on the queue's channel (events/inbox.py wake_channel): payload = count.
for q, queued in pairs(ids) do
    redis.call("publish", queues[q][3], #queued)
end

return table.concat(out)
