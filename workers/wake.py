"""Doorbells: idle consumers sleep on a per-queue ``threading.Event`` instead of a timer.

The bridge PUBLISHes on ``wake_channel(namespace, queue)`` right after it enqueues (events/inbox.py).
One :class:`WakeListener` thread per process holds one pub/sub connection, subscribed to the wake
channel of every queue a consumer asked for, and rings that queue's doorbell on each message. A
consumer clears its doorbell *before* it fetches, so a publish that follows an enqueue can never
fall between "queue looked empty" and "start waiting": either the fetch sees the job, or the
doorbell is already set when the wait begins.

Pub/sub is at-most-once: when the connection drops, the listener reconnects with backoff and
rings every doorbell (something may have been enqueued meanwhile). Consumers always wait with a
timeout (dramatiq's normal backoff), so a dead listener costs latency, never a job.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Final

import redis

from events import is_delay_queue, wake_channel
from runtime import backoff_delay, log_event

__all__ = ["WakeListener"]

log = logging.getLogger(__name__)

#: How often the listener thread looks at new subscriptions and the stop flag, in seconds.
#: Wake messages themselves interrupt the wait at once; this only bounds how long a queue
#: declared after start-up waits for its subscription.
POLL_INTERVAL_S: Final = 0.2
#: First reconnect delay after losing the pub/sub connection, doubled per failure (+-20% jitter), in seconds.
RECONNECT_DELAY_S: Final = 0.1
#: Longest reconnect delay, in seconds.
RECONNECT_DELAY_CAP_S: Final = 5.0


class WakeListener:
    """One pub/sub listener thread per process that rings per-queue doorbells.

    Parameters:
      client(redis.Redis): A client for the broker's Redis; the listener takes one connection
        from its pool for pub/sub.
      namespace(str): The dramatiq namespace (``redis.namespace``).
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._client = client
        self._namespace = namespace
        self._doorbells: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._subscribed: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def doorbell(self, queue_name: str) -> threading.Event:
        """Return ``queue_name``'s doorbell, subscribing to its wake channel if needed.

        Delay queues (``*.DQ``) get a doorbell that only their own acks ring: nothing
        publishes on their behalf.
        """
        with self._lock:
            bell = self._doorbells.get(queue_name)
            if bell is None:
                bell = self._doorbells[queue_name] = threading.Event()
                if not is_delay_queue(queue_name):
                    self._pending.put(queue_name)
                    self._start()
            return bell

    def subscribed(self, queue_name: str) -> bool:
        """Whether the listener currently holds a confirmed subscription for ``queue_name``."""
        return self.connected.is_set() and queue_name in self._subscribed

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fechatter-notify-wake", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener thread (it notices within :data:`POLL_INTERVAL_S`)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._listen()
                return
            except redis.RedisError as exc:
                self.connected.clear()
                # Jittered, so the listeners of many worker processes do not reconnect in step.
                delay = backoff_delay(failures, RECONNECT_DELAY_S, RECONNECT_DELAY_CAP_S)
                failures += 1
                log_event(log, "wake_listener_disconnected", logging.WARNING, error=exc, retry_in=round(delay, 3))
                self._ring_all()  # consumers fall back to fetching at once, then to polling
                if self._stopping.wait(delay):
                    return

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            with self._lock:
                wanted = {name for name in self._doorbells if not is_delay_queue(name)}
            self._subscribed = set()
            self._subscribe(pubsub, wanted)
            first = True
            while not self._stopping.is_set():
                new = set()
                while True:
                    try:
                        new.add(self._pending.get_nowait())
                    except queue.Empty:
                        break
                self._subscribe(pubsub, new - self._subscribed)
                if first and self._subscribed:
                    # Anything enqueued before we subscribed had nobody to wake: ring once
                    # so consumers fetch it now rather than after a backoff.
                    self.connected.set()
                    self._ring_all()
                    first = False
                message = pubsub.get_message(timeout=POLL_INTERVAL_S)
                if message is not None and message.get("type") == "message":
                    self._ring(message["channel"])
        finally:
            self.connected.clear()
            pubsub.close()

    def _subscribe(self, pubsub: redis.client.PubSub, queue_names: set[str]) -> None:
        if not queue_names:
            return
        pubsub.subscribe(*(wake_channel(self._namespace, name) for name in sorted(queue_names)))
        self._subscribed |= queue_names

    def _ring(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        prefix = wake_channel(self._namespace, "")
        bell = self._doorbells.get(name[len(prefix):]) if name.startswith(prefix) else None
        if bell is not None:
            bell.set()

    def _ring_all(self) -> None:
        with self._lock:
            bells = list(self._doorbells.values())
        for bell in bells:
            bell.set()
