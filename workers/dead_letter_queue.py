"""dramatiq's dead-letter queues: the jobs that failed for good, read, requeued and purged.

dramatiq moves a failed message to ``{ns}:{queue}.XQ`` (a sorted set of ids scored by when, in ms)
and ``{ns}:{queue}.XQ.msgs`` (id -> the message as it was enqueued), and drops entries older than
its ``dead_message_ttl`` (7 days) during maintenance (docs/dramatiq-pitfalls.md#redis-key-layout).
It keeps no reason: :class:`~workers.failure_reasons.FailureReasons` stores one per job in
``{ns}:{queue}.XQ.reasons`` (id -> ``{"code", "reason"}``).

A requeue (:func:`requeue_failed_jobs`) puts a job back on its queue with the same message id and a
fresh retry budget (its cause is meant to be fixed), in one script that first removes it from the
dead-letter queue: a job requeued twice is enqueued once. Notifications themselves are deduplicated
per user by the delivery step, so a job that had delivered to some users before failing does not
notify them again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import redis

from events import dead_letter_queue, messages_key, queue_key, wake_channel
from settings import Settings
from workers.broker import redis_client
from workers.connections import ThreadConnections
from workers.failure_reasons import reasons_key
from workers.scripts import LuaScript

__all__ = [
    "DeadLetterQueues",
    "FailedJob",
    "Requeue",
    "RequeueOutcome",
    "purge_failed_jobs",
    "read_failed_jobs",
    "requeue_failed_jobs",
]

_REQUEUE = LuaScript("requeue.lua")
#: The options a requeue removes: the retry count, the last traceback and a delay's due time.
_RETRY_STATE: Final = ("retries", "traceback", "requeue_timestamp", "eta")


@dataclass(frozen=True, slots=True)
class FailedJob:
    """One job in a dead-letter queue; ``job``/``subject`` are None when its argument is not a job."""

    id: str
    queue: str
    at: datetime
    actor: str
    job: str | None
    subject: str | None
    message: dict[str, Any]
    size: int
    retries: int
    code: str
    reason: str


class RequeueOutcome(StrEnum):
    """What a requeue did with one job."""

    #: Back on its queue (with ``dry_run``: would be).
    REQUEUED = "requeued"
    #: No longer in the dead-letter queue (requeued or purged meanwhile): nothing was enqueued.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Requeue:
    """The outcome of requeueing one job."""

    id: str
    outcome: RequeueOutcome


class DeadLetterQueues:
    """The dead-letter queues of the realtime and domain queues.

    Parameters:
      settings(Settings): ``redis`` and ``queues`` are used.
      client(redis.Redis | None): Default: the workers' own client for ``redis.url``, closed by :meth:`close`.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._own_client = client is None
        self._client = client if client is not None else redis_client(settings)

    def close(self) -> None:
        """Close the client if this object made it."""
        if self._own_client:
            self._client.close()

    def read(self) -> list[FailedJob]:
        """Every dead job, oldest first.

        Raises:
          redis.RedisError: Redis refused or timed out.
        """
        return read_failed_jobs(self._client, self._settings)

    def requeue(self, jobs: Sequence[FailedJob], *, dry_run: bool = False) -> list[Requeue]:
        """See :func:`requeue_failed_jobs`."""
        return requeue_failed_jobs(self._client, self._settings, jobs, dry_run=dry_run)

    def purge(self, jobs: Sequence[FailedJob]) -> int:
        """See :func:`purge_failed_jobs`."""
        return purge_failed_jobs(self._client, self._settings, jobs)


def read_failed_jobs(client: redis.Redis, settings: Settings) -> list[FailedJob]:
    """Every job in the realtime and domain queues' dead-letter queues, oldest first.

    Raises:
      redis.RedisError: Redis refused or timed out.
    """
    jobs: list[FailedJob] = []
    for queue in _queues(settings):
        jobs.extend(_read_queue(client, settings.redis.namespace, queue))
    return sorted(jobs, key=lambda j: j.at)


def requeue_failed_jobs(client: redis.Redis, settings: Settings, jobs: Sequence[FailedJob], *,
                        dry_run: bool = False) -> list[Requeue]:
    """Put ``jobs`` back on their queues (see the module's docstring); one round trip each.

    Raises:
      redis.RedisError: Redis refused or timed out (jobs not reached yet stay dead).
    """
    ns, conns = settings.redis.namespace, ThreadConnections(client)
    try:
        return [_requeue(client, conns, ns, job, dry_run) for job in jobs]
    finally:
        conns.close()


def purge_failed_jobs(client: redis.Redis, settings: Settings, jobs: Sequence[FailedJob]) -> int:
    """Delete ``jobs`` from their dead-letter queues (and reasons kept for jobs dramatiq expired).

    Returns:
      int: How many of them were still there.
    """
    ns, removed = settings.redis.namespace, 0
    for queue in {job.queue for job in jobs}:
        ids = [job.id for job in jobs if job.queue == queue]
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(queue_key(ns, dead_letter_queue(queue)), *ids)
            pipe.hdel(messages_key(ns, dead_letter_queue(queue)), *ids)
            pipe.hdel(reasons_key(ns, queue), *ids)
            removed += int(pipe.execute()[0])
        _drop_orphan_reasons(client, ns, queue)
    return removed


def _queues(settings: Settings) -> list[str]:
    return list(dict.fromkeys([settings.queues.realtime, settings.queues.domain]))


def _read_queue(client: redis.Redis, ns: str, queue: str) -> list[FailedJob]:
    scored: list[tuple[bytes, float]] = client.zrange(queue_key(ns, dead_letter_queue(queue)), 0, -1,  # type: ignore[assignment]
                                                      withscores=True)
    if not scored:
        return []
    ids = [member for member, _ in scored]
    data: list[bytes | None] = client.hmget(messages_key(ns, dead_letter_queue(queue)), ids)  # type: ignore[assignment]
    reasons: list[bytes | None] = client.hmget(reasons_key(ns, queue), ids)  # type: ignore[assignment]
    return [_job(queue, member.decode(), score, raw, why)
            for (member, score), raw, why in zip(scored, data, reasons, strict=True) if raw is not None]


def _job(queue: str, message_id: str, score: float, raw: bytes, why: bytes | None) -> FailedJob:
    message = _object(raw)
    args = message.get("args") or [None]
    job = _dict(args[0])
    origin, options = _dict(job.get("origin")), _dict(message.get("options"))
    code, reason = _reason(why, options)
    return FailedJob(
        id=message_id, queue=queue, at=datetime.fromtimestamp(score / 1000, UTC),
        actor=str(message.get("actor_name", "")), job=_str(job.get("kind")), subject=_str(origin.get("subject")),
        message=message, size=len(raw), retries=int(options.get("retries") or 0), code=code, reason=reason,
    )


def _object(raw: bytes) -> dict[str, Any]:
    try:
        return _dict(json.loads(raw))
    except ValueError:
        return {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _reason(why: bytes | None, options: dict[str, Any]) -> tuple[str, str]:
    """``(code, reason)`` as :class:`FailureReasons` stored them, else the best guess from dramatiq's options."""
    stored = _object(why) if why else {}
    if stored.get("code"):
        return str(stored["code"]), str(stored.get("reason", ""))
    traceback = str(options.get("traceback") or "").strip()
    if traceback:
        # dramatiq keeps the traceback of the last *retried* attempt; the final one failed the same way.
        return "unknown", traceback.splitlines()[-1]
    return "unknown", "no reason was recorded (dead-lettered by a worker that did not keep reasons)"


def _requeue(client: redis.Redis, conns: ThreadConnections, ns: str, job: FailedJob, dry_run: bool) -> Requeue:
    if dry_run:
        present = client.zscore(queue_key(ns, dead_letter_queue(job.queue)), job.id) is not None
        return Requeue(job.id, RequeueOutcome.REQUEUED if present else RequeueOutcome.GONE)
    options = {k: v for k, v in job.message.get("options", {}).items() if k not in _RETRY_STATE}
    message = json.dumps({**job.message, "queue_name": job.queue, "options": options}, separators=(",", ":"))
    dead = dead_letter_queue(job.queue)
    keys = [queue_key(ns, dead), messages_key(ns, dead), reasons_key(ns, job.queue), queue_key(ns, job.queue),
            messages_key(ns, job.queue)]
    moved = _REQUEUE(conns, keys, [job.id, message, wake_channel(ns, job.queue)])
    return Requeue(job.id, RequeueOutcome.REQUEUED if moved == 1 else RequeueOutcome.GONE)


def _drop_orphan_reasons(client: redis.Redis, ns: str, queue: str) -> None:
    """Reasons whose job dramatiq's maintenance expired from the dead-letter queue."""
    kept: list[str] = [k.decode() for k in client.hkeys(reasons_key(ns, queue))]  # type: ignore[union-attr]
    if not kept:
        return
    scores = client.zmscore(queue_key(ns, dead_letter_queue(queue)), kept)
    orphans = [member for member, score in zip(kept, scores, strict=True) if score is None]
    if orphans:
        client.hdel(reasons_key(ns, queue), *orphans)
