"""A job that fails because Redis is down is retried once Redis is back, not acked and lost.

The path the chaos suite traced: the job's delivery fails (Redis down), dramatiq's ``Retries``
cannot enqueue the retry (Redis still down), and the worker acks the original once Redis answers.
:class:`workers.failures.DurableRetries` makes the retry's enqueue wait for Redis instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import Middleware

from tests.servers import RedisServer, wait_until
from tests.test_workers_support import R_MESSAGE, enqueue, inbox, make_settings, parse, running_worker

#: Seconds from Redis being back to the job being delivered. Recovery of an abandoned ack set
#: takes the heartbeat timeout (15 s), so only a retry that was really enqueued gets in before.
DELIVERED_WITHIN_S = 10


class HoldFirstJob(Middleware):
    """Holds the first job just before its actor runs, until the test has stopped Redis."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(30)


@pytest.fixture
def client(redis_server_aof: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server_aof.client()
    yield c
    c.close()


@pytest.mark.parametrize(("time_limit", "failed_attempts"), [
    (10.0, 1),  # Redis back as soon as the retry could not be enqueued
    # Redis down longer than the job's time limit (1 s): 6 attempts take >= 3 s. The limit's
    # interrupt must not cut the wait short (the original would then be acked without a retry).
    (1.0, 6),
], ids=["short_outage", "outage_beyond_time_limit"])
def test_a_job_failed_by_a_redis_outage_is_delivered_exactly_once_after_it(
    redis_server_aof: RedisServer, client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    time_limit: float, failed_attempts: int,
) -> None:
    settings = make_settings(redis_server_aof.url, delivery={
        "min_backoff": 0.05, "max_backoff": 0.2, "max_retries": 2, "time_limit": time_limit})
    hold = HoldFirstJob()
    failed_enqueues: list[BaseException] = []
    with running_worker(settings, [settings.queues.domain], threads=1, extra_middleware=[hold]) as runtime:
        real_enqueue = runtime.broker.enqueue

        def enqueue_seen(message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
            try:
                return real_enqueue(message, delay=delay)
            except Exception as exc:
                failed_enqueues.append(exc)
                raise

        monkeypatch.setattr(runtime.broker, "enqueue", enqueue_seen)
        try:
            # Given a worker about to run a new message for 9 and 11
            enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE))
            wait_until(hold.holding.is_set, timeout=10, message="the worker never took the job")
            # When Redis goes down under it: the delivery fails, and so does the retry's enqueue
            redis_server_aof.stop()
            hold.release.set()
            wait_until(lambda: len(failed_enqueues) >= failed_attempts, timeout=10,
                       message="the retry's enqueue did not fail (often enough)")
            assert isinstance(failed_enqueues[0], redis.ConnectionError), failed_enqueues
            # And Redis comes back (with everything it acknowledged: appendfsync always)
            redis_server_aof.start()
            # Then the job is delivered, once to each recipient
            wait_until(lambda: all(inbox(client, settings, u) for u in (9, 11)), timeout=DELIVERED_WITHIN_S,
                       message="the job was lost: not delivered after Redis came back")
        finally:
            hold.release.set()
    assert [len(inbox(client, settings, u)) for u in (7, 9, 11)] == [0, 1, 1]
