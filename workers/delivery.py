"""Delivery: one notification into many users' inboxes, once per user, in one round trip.

Each user's write is done by the ``deliver.lua`` script (see its header): skip if the user's
delivered marker exists, else XADD to the capped inbox stream, set the marker to the entry id and
PUBLISH the announcement on the user's live channel, atomically. One job is one round trip: a
script call per :data:`CHUNK` recipients, in one pipeline with the job's membership-cache update.
When the recipients are "the chat's members", the script reads the membership cache itself.

Live-only notifications (typing, presence: ``events.LIVE_ONLY``) take the same path with
``live_only=True``: the script resolves the same recipients but only announces them on each
user's live channel, with no inbox entry and no marker.

Which marker a notification uses (its *dedupe key*) is what makes copies collapse:
``events.dedupe_key(job)`` (``"{chat_id}:{message_id}"``) for a new message, whichever dialect
carried it; otherwise the job's own identity (:func:`job_identity`), which is the same for every
redelivery and retry of one event.

With ``redis.min_replicas_acked`` > 0 the pipeline that writes the inboxes ends with
``WAIT n replica_ack_timeout`` (no extra round trip): :meth:`Delivery.deliver` returns only once
that many replicas hold the writes, so the job is acked only then, and a failover cannot take back
a notification whose job is gone. Fewer replicas raise :class:`ReplicasBehind`, a transient
failure (workers.failures): dramatiq retries the job, and the markers make the retry write
nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec
import redis

from events import INBOX_FIELD, Job, actor_name_for, dedupe_key, delivered_key, inbox_key, live_channel, members_key
from settings import Delivery as DeliverySettings
from workers.connections import ThreadConnections
from workers.metrics import WorkerMetrics
from workers.notifications import BROADCAST_TYPE, TYPES, encode
from workers.scripts import LuaScript, ScriptCall, run_pipeline, template

__all__ = ["CHUNK", "Delivered", "Delivery", "ReplicasBehind", "job_identity", "notification_key"]

#: Users per script call: bounds how long one call holds Redis (a few us per user).
CHUNK: Final = 500

_DELIVER = LuaScript("deliver.lua")
_PACK = msgspec.msgpack.Encoder()


class ReplicasBehind(redis.ConnectionError):
    """Fewer replicas than ``redis.min_replicas_acked`` acknowledged a job's inbox writes in time.

    A ``redis.ConnectionError``: to dramatiq's retry policy it is the same as a Redis that did not
    answer (workers.failures), which is what it means for the job.
    """


class Delivered(NamedTuple):
    """What one :meth:`Delivery.deliver` did."""

    #: user id -> new inbox entry id, for users who had not received it yet.
    entries: dict[int, str]
    #: users who already had it (marker present): nothing was written for them.
    duplicates: list[int]
    #: users a live-only notification was announced to (nothing stored for anyone).
    announced: list[int]


def job_identity(job: Job, message_id: str | None) -> str:
    """What stays the same across every redelivery of one event: for JetStream, the bridge's event
    identity, else the publisher's event id, else the dramatiq message id (kept by retries and requeues).

    A JetStream job's dramatiq message id is derived from the bridge's event identity, which holds
    the time the stream stored the event: unlike ``stream:seq`` it differs after a stream is deleted
    and re-created (sequences start at 1 again), so a new event is never taken for an old one whose
    marker is still alive. ``stream:seq`` remains for a job handed over without a message id.
    During a rolling upgrade a job redelivered across the change can be delivered once more (its
    old marker has the old name); the typing and presence jobs that use this key are live-only.
    """
    origin = job.origin
    if origin.stream is not None and origin.stream_seq is not None:
        return f"jsm:{message_id}" if message_id else f"js:{origin.stream}:{origin.stream_seq}"
    if origin.event_id:
        return f"ev:{origin.event_id}"
    return f"dq:{message_id}"


def notification_key(job: Job, message_id: str | None) -> str:
    """The dedupe key of ``job``'s notification (see the module docstring)."""
    shared = dedupe_key(job)
    if shared is not None:
        return shared
    return f"{actor_name_for(job)}:{job_identity(job, message_id)}"


class Delivery:
    """Writes notifications into inboxes.

    Parameters:
      conns(ThreadConnections): Each worker thread's own connection.
      namespace(str): Key namespace (``redis.namespace``).
      settings(DeliverySettings): Inbox length and age limits.
      metrics(WorkerMetrics): ``notifications`` and ``duplicates`` are counted by type.
      min_replicas_acked(int): Replicas that must hold the inbox writes before :meth:`deliver`
        returns (``WAIT``); 0: the primary's answer is enough.
      replica_ack_timeout(float): ``WAIT``'s bound, in seconds.
    """

    def __init__(self, conns: ThreadConnections, namespace: str, settings: DeliverySettings,
                 metrics: WorkerMetrics, *, min_replicas_acked: int = 0, replica_ack_timeout: float = 1.0) -> None:
        self._conns = conns
        self._replicas = min_replicas_acked
        # WAIT's 0 means "forever": never send it.
        self._wait_ms = max(1, round(replica_ack_timeout * 1000))
        self._ns = namespace
        self._max_len = settings.inbox_max_len
        self._max_age_ms = int(settings.inbox_max_age * 1000)
        self._metrics = metrics
        self._inbox = template(lambda user: inbox_key(namespace, user))
        self._live = template(lambda user: live_channel(namespace, user))

    def deliver(
        self,
        notification: dict[str, Any],
        *,
        key: str,
        ttl_s: float,
        users: Iterable[int] = (),
        chat: int | None = None,
        skip: Iterable[int] = (),
        mark_skipped: bool = False,
        also: Sequence[ScriptCall] = (),
        live_only: bool = False,
    ) -> Delivered | None:
        """Deliver ``notification`` to every recipient that has not had ``key`` yet.

        Recipients are ``users`` plus, when ``chat`` is given, every member in the chat's
        membership cache (read inside the same script: no extra round trip), minus ``skip``.

        Parameters:
          notification(dict): A JSON object with a string ``type``.
          key(str): The dedupe key (:func:`notification_key`).
          ttl_s(float): How long the per-user markers live, in seconds; longer than any
            redelivery of the same event.
          users(Iterable[int]): Explicit recipients.
          chat(int | None): Also deliver to this chat's cached members.
          skip(Iterable[int]): Users who must not get it (the author).
          mark_skipped(bool): Set the skipped users' markers too, so that another copy of the
            event that cannot tell who the author was skips them as well.
          also(Sequence[ScriptCall]): Other script calls to send in the same round trip
            (membership updates); they run first.
          live_only(bool): Announce to open streams only: no inbox entry, no marker
            (``key``, ``ttl_s`` and ``mark_skipped`` are then unused).

        Returns:
          What was delivered, or None when ``chat``'s membership is not cached: nothing was
          written (``also`` did run) and the caller must resolve the members itself.

        Raises:
          redis.RedisError: Redis failed; some chunks may be written. Running the same call
            again completes the rest without duplicating (markers).
          ReplicasBehind: everything was written, but too few replicas acknowledged it in time.
        """
        skipped = sorted(set(skip))
        explicit = sorted(set(users).difference(skipped))
        min_id = f"{max(0, int(time.time() * 1000) - self._max_age_ms)}-0"
        marker = template(lambda user: delivered_key(self._ns, user, key))
        # A str, not bytes: the Lua cmsgpack of Redis 6.2 cannot read msgpack "bin".
        head = [encode(notification).decode(), INBOX_FIELD, self._max_len, min_id, self._max_age_ms,
                max(1, int(ttl_s * 1000)), *self._inbox, *marker, *self._live]
        skip_ids = [str(u) for u in skipped]
        calls: list[ScriptCall] = []
        mark_skipped = mark_skipped and not live_only
        if chat is not None:
            calls.append(_call([*head, members_key(self._ns, chat), CHUNK, mark_skipped,
                                [str(u) for u in explicit], skip_ids, live_only]))
        elif explicit or (skipped and mark_skipped):
            for start in range(0, max(len(explicit), 1), CHUNK):
                chunk = [str(u) for u in explicit[start:start + CHUNK]]
                calls.append(_call([*head, "", CHUNK, mark_skipped, chunk, skip_ids, live_only]))
        if not calls and not also:
            return Delivered({}, [], [])
        if self._replicas and calls and not live_only:
            replies = self._run_and_wait([*also, *calls])[len(also):]
        else:
            replies = run_pipeline(self._conns, [*also, *calls])[len(also):]
        if chat is not None:
            status = _text(replies[0][0])
            if status == "unknown":
                return None
            if status == "members":
                members = {int(m) for m in replies[0][1:]}
                return self.deliver(notification, key=key, ttl_s=ttl_s, users=members.union(explicit),
                                    skip=skipped, mark_skipped=mark_skipped, live_only=live_only)
        return self._count(notification, replies)

    def _run_and_wait(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """The script calls and ``WAIT`` in one pipeline; the script replies, once enough replicas hold them."""
        wait = ("WAIT", self._replicas, self._wait_ms)
        replies = LuaScript.call_all(lambda commands: self._conns.pipeline([*commands, wait]), self._conns.call,
                                     calls)
        acked = int(replies[-1])
        if acked < self._replicas:
            raise ReplicasBehind(f"WAIT: {acked} of {self._replicas} replica(s) acknowledged the inbox writes "
                                 f"within {self._wait_ms} ms (redis.min_replicas_acked)")
        return replies[:-1]

    def _count(self, notification: dict[str, Any], replies: list[Any]) -> Delivered:
        entries: dict[int, str] = {}
        duplicates: list[int] = []
        announced: list[int] = []
        for reply in replies:
            status = _text(reply[0])  # "ok N": N entries went into full inboxes (deliver.lua)
            if status.startswith("ok "):
                self._metrics.inbox_trims.inc(int(status[3:]))
            for user, entry in zip(reply[1::2], reply[2::2], strict=True):
                if entry is None:
                    duplicates.append(int(user))
                elif not entry:  # "": announced live only
                    announced.append(int(user))
                else:
                    entries[int(user)] = _text(entry)
        # Broadcasts may carry any type: keep the metric's label set bounded.
        kind = notification.get("type")
        kind = kind if kind in TYPES else BROADCAST_TYPE
        if entries or announced:
            self._metrics.notifications.labels(kind).inc(len(entries) + len(announced))
            self._metrics.delivered()  # enqueue-to-delivery latency, once per job
        if duplicates:
            self._metrics.duplicates.labels(kind).inc(len(duplicates))
        return Delivered(entries, sorted(duplicates), sorted(announced))


def _call(args: list[Any]) -> ScriptCall:
    return (_DELIVER, (), [_PACK.encode(args)])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
