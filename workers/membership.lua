-- membership: keep the chat membership cache and each user's chat set in step.
--
-- ARGV[1] = msgpack [mode, chat_id, ttl_ms, members_key, chats_prefix, chats_suffix, users]
--   members_key = members_key(chat); chats_key(user) = chats_prefix .. user .. chats_suffix
--   (events/inbox.py); user and chat ids are decimal strings.
--
-- mode "add":   the users are members (a list an event carried, or PostgreSQL's answer):
--               SADD them to the chat's set and the chat to each user's set; refresh TTLs.
--               Every message of a chat carries the same list, so when the entry is fresh (more
--               than half its TTL left) only users it lacks are written: 2 calls, not 3 per user.
-- mode "join":  one user joined. The chat's set is updated only if it exists: a cache entry is
--               either the whole membership or absent (absent = ask PostgreSQL), so a set holding
--               only the joiner must never be created. The user's chat set is always updated.
-- mode "leave": one user left: SREM from both sets.
local a = cmsgpack.unpack(ARGV[1])
local mode, chat, ttl = a[1], a[2], a[3]
local members, chats_pre, chats_suf, users = a[4], a[5], a[6], a[7]

if mode == "leave" then
    for _, user in ipairs(users) do
        redis.call("srem", members, user)
        redis.call("srem", chats_pre .. user .. chats_suf, chat)
    end
    return 0
end

if mode == "add" and redis.call("pttl", members) > ttl / 2 then
    local missing = {}
    for first = 1, #users, 1000 do  -- unpack() is bounded by Lua's C stack
        local last = math.min(first + 999, #users)
        local known = redis.call("smismember", members, unpack(users, first, last))
        for i = first, last do
            if known[i - first + 1] == 0 then
                missing[#missing + 1] = users[i]
            end
        end
    end
    users = missing
end

if mode == "add" or redis.call("exists", members) == 1 then
    for _, user in ipairs(users) do
        redis.call("sadd", members, user)
    end
    if #users > 0 then
        redis.call("pexpire", members, ttl)
    end
end
for _, user in ipairs(users) do
    local chats = chats_pre .. user .. chats_suf
    redis.call("sadd", chats, chat)
    redis.call("pexpire", chats, ttl)
end
return 0
