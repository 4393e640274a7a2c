-- deliver: append one notification to many users' inboxes, exactly once per user.
--
-- Key names come from events/inbox.py: the caller passes each name as prefix + suffix around
-- the user id (inbox_key, delivered_key for this notification's dedupe key, live_channel), so
-- this script never spells the layout itself.
--
-- ARGV[1] = msgpack [notification, field, max_len, min_id, inbox_ttl_ms, marker_ttl_ms,
--                    inbox_prefix, inbox_suffix, marker_prefix, marker_suffix, live_prefix, live_suffix,
--                    members_key, max_members, mark_skipped, users, skipped, live_only]
--   (one argument: redis-py's per-argument packing cost more than the rest of a job's Python;
--   user ids are decimal strings, as they are in the membership sets)
--
-- Recipients: the n given users, plus every member of members_key when it is not "" (the chat
-- membership cache), minus the m skipped users. If members_key is given but does not exist,
-- nothing is written and {"unknown"} is returned (the caller asks PostgreSQL). If it has more
-- than max_members members, nothing is written and {"members", id...} is returned (the caller
-- delivers in chunks, so one call never holds Redis for long).
--
-- For each recipient: if its marker exists, the user already has this notification (another
-- dialect of the same message, or a redelivered job) and nothing is written. Otherwise:
--   XADD the notification to the inbox, trimmed to ~max_len entries, and, on one delivery in
--   ten (the new id's millisecond ends in 0, so every active inbox gets its turn), to ids
--   >= ~min_id: the age trim is the costliest step per user and the inbox's own TTL already
--   removes inboxes idle for the whole age limit,
--   give the inbox a TTL (an inbox nobody writes to for inbox_ttl_ms disappears),
--   SET the marker to the new entry id with marker_ttl_ms,
--   PUBLISH "{entry_id}\n{notification}" on the user's live channel (events.inbox.encode_announcement).
-- With mark_skipped = "1", skipped users (the author) get their marker set to "-" if absent, so
-- a later copy of the same event that does not say who the author was skips them too.
-- The script is atomic, so a marker exists if and only if its entry does: a worker killed before
-- or after this call causes neither a loss nor a duplicate when its job is redone.
--
-- With live_only = true (typing, presence: events.lanes.LIVE_ONLY) nothing is stored: no inbox
-- entry, no marker (there is nothing to deduplicate against, and a repeated "typing" is
-- harmless), only PUBLISH "\n{notification}" on each recipient's live channel. The empty id line
-- tells the gateway the frame has no inbox id, so it is sent without an SSE id: and can never be
-- replayed by a resume.
--
-- Returns {"ok", user_1, entry_id_or_false, user_2, ...} for every recipient; with live_only
-- each entry id is "" (announced, not stored). The status is "ok N" when N of the entries went into
-- an inbox already holding max_len entries: each pushes the oldest one out (counted as inbox trims).

local a = cmsgpack.unpack(ARGV[1])
local body, field, max_len, min_id = a[1], a[2], a[3], a[4]
local inbox_ttl, marker_ttl = a[5], a[6]
local inbox_pre, inbox_suf = a[7], a[8]
local marker_pre, marker_suf = a[9], a[10]
local live_pre, live_suf = a[11], a[12]
local members_key, max_members = a[13], a[14]
local mark_skipped = a[15]
local users, skipped = a[16], a[17]
local live_only = a[18]

local skip = {}
for _, user in ipairs(skipped) do
    skip[user] = true
end

local recipients, seen = {}, {}
local function add(user)
    if not skip[user] and not seen[user] then
        seen[user] = true
        recipients[#recipients + 1] = user
    end
end
for _, user in ipairs(users) do
    add(user)
end
if members_key ~= "" then
    local members = redis.call("smembers", members_key)
    if #members == 0 then
        return {"unknown"}
    end
    if #members > max_members then
        table.insert(members, 1, "members")
        return members
    end
    for _, user in ipairs(members) do
        add(user)
    end
end

local result = {"ok"}
local trims = 0
if live_only then
    local announcement = "\n" .. body
    for _, user in ipairs(recipients) do
        redis.call("publish", live_pre .. user .. live_suf, announcement)
        result[#result + 1] = user
        result[#result + 1] = ""
    end
    return result
end
for _, user in ipairs(recipients) do
    local marker = marker_pre .. user .. marker_suf
    result[#result + 1] = user
    if redis.call("exists", marker) == 1 then
        result[#result + 1] = false
    else
        local inbox = inbox_pre .. user .. inbox_suf
        if redis.call("xlen", inbox) >= max_len then
            trims = trims + 1
        end
        local id = redis.call("xadd", inbox, "MAXLEN", "~", max_len, "*", field, body)
        local dash = string.find(id, "-", 1, true)
        if string.sub(id, dash - 1, dash - 1) == "0" then
            redis.call("xtrim", inbox, "MINID", "~", min_id)
        end
        redis.call("pexpire", inbox, inbox_ttl)
        redis.call("set", marker, id, "PX", marker_ttl)
        redis.call("publish", live_pre .. user .. live_suf, id .. "\n" .. body)
        result[#result + 1] = id
    end
end
if mark_skipped then
    for user in pairs(skip) do
        redis.call("set", marker_pre .. user .. marker_suf, "-", "NX", "PX", marker_ttl)
    end
end
if trims > 0 then
    result[1] = "ok " .. trims
end
return result
