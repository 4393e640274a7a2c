"""Helpers shared by the tests/test_workers_*.py modules (this module holds no tests).

Jobs are put on the queues exactly the way the bridge does it: dramatiq's own Redis layout
(``{ns}:{queue}`` list + ``{ns}:{queue}.msgs`` hash), ``args=[events.job_to_args(job)]``,
Sentry's ``_sentry_headers`` option present, then a PUBLISH on the queue's wake channel.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import redis

from events import Job, actor_name_for, job_to_args, lane_for, parse_event
from events.inbox import INBOX_FIELD, decode_announcement, inbox_key, live_channel, wake_channel
from settings.model import Settings
from tests.servers import wait_until
from workers.actors import queue_for
from workers.metrics import WorkerMetrics
from workers.process import WorkerRuntime

# docs/event-contract.md#payloads, verbatim: one message (chat 42, members 7 = sender, 9, 11) in four dialects.
R_MESSAGE = b'{"MessageReceived":{"message":{"id":"1234","chat_id":42,"sender_id":7,"content":"Hi team","files":[],"timestamp":1750992346},"chat_id":42,"recipients":[7,9,11]}}'  # noqa: E501
N_MESSAGE = b'{"event_type":"new_message","chat_id":42,"sender_id":7,"sender_name":"Alice Zhang","content":"Hi team","files":[],"timestamp":"2025-06-27T02:45:46.782538Z","message_id":1234,"workspace_id":2}'  # noqa: E501
C_MESSAGE = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7,9,11],"occurred_at":"2025-06-27T02:45:46.790112345Z"}'  # noqa: E501
U_MESSAGE = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7],"occurred_at":"2025-06-27T02:45:46.801002117Z","sender_name":"Alice Zhang","chat_name":"Design","workspace_id":2,"event_id":"5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21","trace_context":{}}'  # noqa: E501
DIALECTS = {
    "fechatter.realtime.chat.42": R_MESSAGE,
    "fechatter.message.new": N_MESSAGE,
    "fechatter.message.created": C_MESSAGE,
    "fechatter.messages.message.created.v1": U_MESSAGE,
}


def make_settings(redis_url: str, namespace: str = "t", **sections: dict[str, Any]) -> Settings:
    """Settings for a test: this Redis, a namespace, short retries, plus any section overrides."""
    data: dict[str, Any] = {
        "redis": {"url": redis_url, "namespace": namespace, "socket_timeout": 2, "socket_connect_timeout": 2},
        "delivery": {"min_backoff": 0.05, "max_backoff": 0.2, "max_retries": 2, "time_limit": 10},
        "metrics": {"port": 0, "worker_port": 0},
        "health": {"port": 0, "worker_port": 0},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings.model_validate(data)


def settings_yaml(settings: Settings) -> str:
    """The settings as a notify.yml (for worker subprocesses)."""
    data = settings.model_dump(mode="json")
    data["redis"]["url"] = settings.redis.url.get_secret_value()
    for section in ("sentry", "database"):
        for key in ("dsn", "url"):
            secret = getattr(getattr(settings, section), key, None)
            if secret is not None:
                data[section][key] = secret.get_secret_value()
    return json.dumps(data)  # JSON is YAML


def parse(subject: str, data: bytes | dict[str, Any], **kwargs: Any) -> Job:
    """``events.parse_event`` with a payload given as bytes or as a dict."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_event(subject, raw, kwargs.pop("headers", None), **kwargs)


def enqueue(client: redis.Redis, settings: Settings, *jobs: Job | tuple[str, str, Any],
            wake: bool = True) -> list[str]:
    """Enqueue jobs the way the bridge does; returns their dramatiq message ids.

    A job may also be given raw as ``(queue, actor_name, args0)`` (for undecodable jobs).
    """
    ns = settings.redis.namespace
    ids: list[str] = []
    counts: dict[str, int] = {}
    with client.pipeline(transaction=True) as pipe:
        for job in jobs:
            if isinstance(job, tuple):
                queue, actor, arg = job
            else:
                queue, actor, arg = queue_for(lane_for(job), settings), actor_name_for(job), job_to_args(job)
            message_id = str(uuid.uuid4())
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=queue, actor_name=actor, args=(arg,), kwargs={},
                options={"_sentry_headers": {"baggage": "", "sentry-trace": ""}, "redis_message_id": message_id},
                message_id=message_id,
            )
            pipe.hset(f"{ns}:{queue}.msgs", message_id, message.encode())
            pipe.rpush(f"{ns}:{queue}", message_id)
            counts[queue] = counts.get(queue, 0) + 1
            ids.append(message_id)
        if wake:
            for queue, count in counts.items():
                pipe.publish(wake_channel(ns, queue), count)
        pipe.execute()
    return ids


def inbox(client: redis.Redis, settings: Settings, user_id: int) -> list[dict[str, Any]]:
    """The notifications in ``user_id``'s inbox, oldest first."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        inbox_key(settings.redis.namespace, user_id))
    return [json.loads(fields[INBOX_FIELD.encode()]) for _, fields in entries]


def of_type(client: redis.Redis, settings: Settings, user_id: int, kind: str) -> list[dict[str, Any]]:
    """The notifications of one ``type`` in ``user_id``'s inbox."""
    return [n for n in inbox(client, settings, user_id) if n["type"] == kind]


def drained(client: redis.Redis, settings: Settings) -> bool:
    """True when no job is waiting, delayed or unacked on either queue."""
    ns = settings.redis.namespace
    # One MULTI: read one by one, a retry moving from the delay queue to its queue between
    # two reads would look like "nothing anywhere".
    with client.pipeline(transaction=True) as pipe:
        for queue in (settings.queues.realtime, settings.queues.domain):
            for name in (queue, f"{queue}.DQ"):
                pipe.llen(f"{ns}:{name}")
                pipe.hlen(f"{ns}:{name}.msgs")
        return not any(pipe.execute())


def wait_drained(client: redis.Redis, settings: Settings, timeout: float = 10.0) -> None:
    """Poll until every enqueued job was processed (acked or dead-lettered)."""
    wait_until(lambda: drained(client, settings), timeout=timeout, message="queues did not drain")


def dead_letters(client: redis.Redis, settings: Settings, queue: str) -> int:
    """How many jobs sit in ``queue``'s dead-letter set."""
    return int(client.zcard(f"{settings.redis.namespace}:{queue}.XQ"))


def wait_subscribed(client: redis.Redis, settings: Settings, queues: Sequence[str], subscribers: int = 1) -> None:
    """Poll until ``subscribers`` wake listeners hold a subscription to each queue's channel."""
    channels = [wake_channel(settings.redis.namespace, q) for q in queues]

    def ready() -> bool:
        counts = dict(client.pubsub_numsub(*channels))
        return all(counts.get(c.encode(), 0) >= subscribers for c in channels)

    wait_until(ready, timeout=10, message="wake listeners did not subscribe")


@contextlib.contextmanager
def running_worker(settings: Settings, queues: Sequence[str] | None = None, *, threads: int = 4,
                   metrics: WorkerMetrics | None = None, **kwargs: Any) -> Iterator[WorkerRuntime]:
    """A real dramatiq worker (consumer + worker threads) in this process, stopped after."""
    queues = list(queues or [settings.queues.realtime, settings.queues.domain])
    runtime = WorkerRuntime(settings, queues=queues, threads=threads, metrics=metrics, **kwargs).start()
    try:
        if runtime.broker.wake is not None:
            client = redis.Redis.from_url(settings.redis.url.get_secret_value())
            try:
                wait_subscribed(client, settings, queues)
            finally:
                client.close()
        yield runtime
    finally:
        runtime.stop(timeout_s=5)


def counter(metric: Any, *labels: str) -> float:
    """The current value of a prometheus counter (optionally one label set)."""
    child = metric.labels(*labels) if labels else metric
    return float(child._value.get())


def soon(seconds: float = 5.0) -> datetime:
    """An aware datetime ``seconds`` from now."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


class LiveChannels:
    """Listens on users' live channels the way a gateway does: what each user's open streams get.

    Use as a context manager; subscribed (confirmed) on entry, so nothing published after is missed.
    """

    def __init__(self, client: redis.Redis, settings: Settings, users: Sequence[int]) -> None:
        self._pubsub = client.pubsub()
        self._by_channel = {live_channel(settings.redis.namespace, u).encode(): u for u in users}
        self._got: dict[int, list[tuple[str | None, dict[str, Any]]]] = {u: [] for u in users}

    def __enter__(self) -> LiveChannels:
        self._pubsub.subscribe(*self._by_channel)
        confirmed = 0

        def all_confirmed() -> bool:
            nonlocal confirmed
            while (message := self._pubsub.get_message(timeout=0.05)) is not None:
                confirmed += message["type"] == "subscribe"
            return confirmed == len(self._by_channel)

        wait_until(all_confirmed, message="live channels not subscribed")
        return self

    def __exit__(self, *exc: object) -> None:
        self._pubsub.close()

    def received(self, user: int) -> list[tuple[str | None, dict[str, Any]]]:
        """``(entry id or None for live only, notification)`` announced to ``user`` so far."""
        while (message := self._pubsub.get_message(timeout=0)) is not None:
            if message["type"] == "message":
                entry_id, body = decode_announcement(message["data"])
                self._got[self._by_channel[message["channel"]]].append((entry_id, json.loads(body)))
        return list(self._got[user])

    def notifications(self, user: int) -> list[dict[str, Any]]:
        """The notifications announced to ``user`` so far, in order."""
        return [n for _, n in self.received(user)]
