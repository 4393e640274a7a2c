"""workers.failures against a real Redis replica: a write refused by a demoted server is transient."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from tests.servers import RedisServer, wait_until
from workers.failures import is_transient


def test_a_script_writing_on_a_replica_fails_transiently_and_a_script_bug_does_not(
        redis_server_factory: Callable[..., RedisServer]) -> None:
    primary, replica = redis_server_factory(), redis_server_factory()
    client = replica.client()
    try:
        client.replicaof("127.0.0.1", primary.port)  # as a failover leaves the old primary
        wait_until(lambda: client.info("replication").get("master_link_status") == "up", timeout=10)
        # What a worker's delivery script meets on a just-demoted primary: retried, not dead-lettered
        with pytest.raises(redis.ResponseError) as refused:
            client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "k")
        assert is_transient(refused.value), str(refused.value)
        with pytest.raises(redis.ResponseError) as plain:
            client.set("k", "x")
        assert is_transient(plain.value), str(plain.value)
        # A script's own error is a bug: retrying cannot help
        with pytest.raises(redis.ResponseError) as bug:
            client.eval("return redis.call('NOSUCHCOMMAND')", 0)
        assert not is_transient(bug.value), str(bug.value)
    finally:
        client.close()
