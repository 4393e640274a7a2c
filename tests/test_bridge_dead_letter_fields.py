"""A dead letter's fields travel to enqueue.lua as one argument and arrive byte for byte."""

from __future__ import annotations

import redis

from bridge.enqueue import Enqueuer, connect_redis, pack_fields
from tests.servers import RedisServer

NS = "test-notify"


def test_packed_fields_are_length_prefixed_so_any_byte_is_allowed() -> None:
    assert pack_fields(["code", b"a:b", "", "é"]) == b"4:code3:a:b0:2:\xc3\xa9"


async def test_fields_with_any_bytes_reach_the_dead_letter_stream_unchanged(redis_server: RedisServer) -> None:
    # Given dead letters whose values hold colons, digits, NULs, invalid UTF-8, nothing, and 100 KB
    odd: list[list[str | bytes]] = [
        ["subject", "fechatter.message.created", "data", bytes(range(256)), "reason", "12:34:"],
        ["subject", "x", "data", b"", "empty", ""],
        ["subject", "y", "data", b"\xff\xfe" + b":" * 100_000, "code", "payload_too_large"],
    ]
    enqueuer = Enqueuer(connect_redis(redis_server.url, socket_timeout=2, connect_timeout=2), namespace=NS,
                        dedupe_window=3600, dead_letter_stream="dead-letters", dead_letter_max_len=1000)
    batch = enqueuer.new_batch()
    for i, fields in enumerate(odd):
        batch.add_dead_letter(f"{NS}:bridge:dedupe:S:{i}", fields)
    # When the batch is enqueued
    assert await enqueuer.run(batch) == b"111"
    await enqueuer.close()
    # Then each is one stream entry with exactly its fields and values
    entries = redis.Redis.from_url(redis_server.url).xrange(f"{NS}:dead-letters")
    want = [{(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
             for k, v in zip(fields[::2], fields[1::2], strict=True)} for fields in odd]
    assert [fields for _, fields in entries] == want
