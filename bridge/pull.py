"""The self-healing pull loop of one durable consumer (ADR-37, nats.go ``jetstream`` Consume).

The loop owns a private inbox and publishes ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
requests to it itself (nats-py's ``fetch(heartbeat=)`` sends a shortened expiry with the full
heartbeat and gets ``400 heartbeat value too large``, nats.py#794 and #986; the own request is
also ~4x cheaper; docs/nats-pitfalls.md#pull-request-heartbeats). Its request state is
:class:`~bridge.pull_request.PullState`, and
:func:`~bridge.pull_request.next_pull` is the ONE place that decides whether and what to pull
next (and clamps the heartbeat to expires/2 on every request).

* The inbox callback only files messages (never awaits Redis), so heartbeats are read even
  while an enqueue is slow; fetching runs ahead of enqueueing up to ``max_in_flight``.
* Statuses go through :func:`bridge.status.classify`.
* Watchdog: with a request outstanding, 2 x heartbeat without any message or status is a
  *missed idle heartbeat*: logged once with its likely cause, counted, the consumer checked
  (re-created if gone) and a fresh pull issued. Never fatal; ``max_missed_heartbeats`` misses in
  a row make the bridge not ready.
* Disconnect pauses the loop and the watchdog; reconnect forgets outstanding requests (they do
  not survive a server restart) and pulls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.errors import BridgeError, JetStreamError
from bridge.metrics import BridgeMetrics
from bridge.process import JetStreamProcessor
from bridge.provision import Provisioner
from bridge.pull_request import NS, PullState, next_pull
from bridge.status import Action, classify
from runtime import backoff_delay, log_event, stop_task
from settings import Consumer

__all__ = ["PullConsumer"]

log = logging.getLogger("bridge.pull")

#: Largest batch handed to one enqueue script call (bounds Redis' time inside the script).
MAX_SCRIPT_BATCH: Final = 1000
#: Recovery backoff (503, consumer deleted, bad request), in seconds.
RECOVERY_BASE_S: Final = 0.25
RECOVERY_CAP_S: Final = 10.0
_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_PENDING_MSGS: Final = "Nats-Pending-Messages"


class PullConsumer:
    """Pull loop + watchdog + recovery of one durable consumer.

    Parameters:
      nc(NATS): The connection.
      consumer(Consumer): Its settings.
      processor(JetStreamProcessor): Enqueues and settles fetched batches.
      provisioner(Provisioner): Verifies / re-creates the consumer.
      metrics(BridgeMetrics): Collectors.
      max_missed_heartbeats(int): Misses in a row before :meth:`problems` reports not ready.
    """

    def __init__(
        self,
        nc: NATS,
        consumer: Consumer,
        *,
        processor: JetStreamProcessor,
        provisioner: Provisioner,
        metrics: BridgeMetrics,
        max_missed_heartbeats: int,
    ) -> None:
        self._nc = nc
        self.consumer = consumer
        self.name = consumer.durable
        self._processor = processor
        self._provisioner = provisioner
        self._metrics = metrics
        self._max_missed = max_missed_heartbeats
        self.state = PullState(consumer.batch, consumer.pull_expiry, consumer.idle_heartbeat, consumer.max_in_flight)
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.durable}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._recovery: asyncio.Task[None] | None = None
        self._kicks: set[asyncio.Task[None]] = set()
        self._recovery_attempt = 0
        self._stopping = False
        self._circuit_open = False
        self._pulling = False
        #: Heartbeat of the last request sent, in seconds (what the watchdog waits 2x for).
        self.heartbeat = 0.0
        self.last_activity = time.monotonic()
        self.last_pull = 0.0
        self.missed_in_a_row = 0
        self.failure: str | None = None
        self.statuses_seen: dict[int, int] = {}
        self._labels = (metrics.pull_requests.labels(self.name), metrics.in_flight.labels(self.name))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the inbox, start the processor and the watchdog, send the first pull."""
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=-1,
                                             pending_bytes_limit=-1)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._process_loop(), name=f"process-{self.name}"),
                       loop.create_task(self._watchdog(), name=f"watchdog-{self.name}")]
        log_event(log, "pull_loop_started", stream=self.consumer.stream, consumer=self.name,
                  batch=self.state.batch, expires_s=self.state.expires, heartbeat_s=self.state.heartbeat,
                  max_in_flight=self.state.max_in_flight)
        await self._pull()

    async def stop(self, within: float) -> None:
        """Stop pulling, settle what is in hand (within ``within`` seconds), then stop the tasks."""
        self._stopping = True
        self.state.paused = True
        await stop_task(self._recovery)
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            log_event(log, "stop_timeout", logging.WARNING, consumer=self.name, unsettled=self.state.in_flight)
        # Hook (bridge/holding.py): events held through a Redis outage are nak'd now, while NATS is up.
        await self._processor.release()
        await asyncio.gather(*(stop_task(task) for task in self._tasks))
        log_event(log, "pull_loop_stopped", stream=self.consumer.stream, consumer=self.name,
                  unsettled=self.state.in_flight)

    def retune(self, consumer: Consumer, max_missed_heartbeats: int) -> None:
        """Take a reloaded durable's per-request parameters; they apply from the next request on.

        Requests already sent keep theirs (and the watchdog keeps waiting on the last one's
        heartbeat until a new one is sent), so nothing in flight is cut short.
        """
        state = self.state
        wanted = (consumer.batch, consumer.pull_expiry, consumer.idle_heartbeat, consumer.max_in_flight,
                  max_missed_heartbeats)
        if wanted == (state.batch, state.expires, state.heartbeat, state.max_in_flight, self._max_missed):
            return
        state.batch, state.expires = consumer.batch, consumer.pull_expiry
        state.heartbeat, state.max_in_flight = consumer.idle_heartbeat, consumer.max_in_flight
        self._max_missed = max_missed_heartbeats
        self._processor.pull_expiry_changed(consumer.pull_expiry)
        log_event(log, "pull_retuned", stream=self.consumer.stream, consumer=self.name, batch=state.batch,
                  expires_s=state.expires, heartbeat_s=state.heartbeat, max_in_flight=state.max_in_flight,
                  max_missed_heartbeats=max_missed_heartbeats)
        self._kick()

    # -- connection and circuit events -----------------------------------------------------

    def on_disconnected(self) -> None:
        """Pause pulling and the watchdog."""
        self.state.connected = False

    def on_reconnected(self) -> None:
        """Outstanding requests died with the old connection: forget them and pull at once."""
        self.state.connected = True
        self.state.pending = 0
        self.last_activity = time.monotonic()
        log_event(log, "pull_reissued", stream=self.consumer.stream, consumer=self.name, reason="reconnected")
        self._kick()

    def set_circuit_open(self, is_open: bool) -> None:
        """Stop pulling while Redis is down; resume when it answers."""
        self._circuit_open = is_open
        self._update_paused()
        if not is_open:
            self._kick()

    def _update_paused(self) -> None:
        self.state.paused = self._stopping or self._circuit_open or self._recovery is not None

    def _kick(self) -> None:
        if not self._stopping:
            # The loop keeps only weak references to tasks: hold this one until it is done.
            task = asyncio.get_running_loop().create_task(self._pull())
            self._kicks.add(task)
            task.add_done_callback(self._kicks.discard)

    # -- pulling ------------------------------------------------------------------------

    async def _pull(self) -> None:
        if self._pulling:
            return
        request = next_pull(self.state)
        if request is None:
            return
        self._pulling = True
        if self.state.pending == 0:
            # The watchdog measures silence from the first request of a quiet period.
            self.last_activity = time.monotonic()
        # Counted before sending: a fast server may deliver before publish() returns.
        self.state.pending += request.batch
        try:
            await self._nc.publish(self._subject, request.payload(), reply=self._inbox)
        except nats.errors.Error as exc:
            self.state.pending = max(0, self.state.pending - request.batch)
            log_event(log, "pull_not_sent", logging.WARNING, consumer=self.name, reason=f"{type(exc).__name__}")
            return
        finally:
            self._pulling = False
        self.heartbeat = request.idle_heartbeat_ns / NS
        self.last_pull = time.monotonic()
        self._labels[0].inc()

    async def _on_msg(self, msg: Msg) -> None:
        self.last_activity = time.monotonic()
        headers = msg.headers
        if headers is not None and not msg.reply:
            status = headers.get(_STATUS)
            if status is not None:
                await self._on_status(status, headers)
                return
        state = self.state
        state.pending = state.pending - 1 if state.pending > 0 else 0
        state.in_flight += 1
        self.missed_in_a_row = 0
        self._recovery_attempt = 0
        self._buffer.append(msg)
        self._idle.clear()
        self._wake.set()
        if state.pending <= state.batch // 2:
            await self._pull()

    async def _on_status(self, status: str, headers: dict[str, str]) -> None:
        try:
            code = int(status)
        except ValueError:
            code = 0
        self.statuses_seen[code] = self.statuses_seen.get(code, 0) + 1
        verdict = classify(code, 0, headers.get(_DESCRIPTION, ""))
        if verdict.action is Action.ACTIVITY:
            self.missed_in_a_row = 0
            self._recovery_attempt = 0
            return
        self._metrics.statuses.labels(self.name, verdict.reason).inc()
        if verdict.action is Action.PULL_ENDED:
            left = headers.get(_PENDING_MSGS)
            if left is not None:
                self.state.pending = max(0, self.state.pending - int(left))
            if verdict.reason == "request_limit":
                log_event(log, "pull_limited", logging.WARNING, stream=self.consumer.stream, consumer=self.name,
                          status=code, description=headers.get(_DESCRIPTION, ""))
            await self._pull()
        elif verdict.action is Action.REPULL:
            self.state.pending = 0
            log_event(log, "pull_reissued", stream=self.consumer.stream, consumer=self.name, reason=verdict.reason)
            await self._pull()
        else:
            if verdict.terminal:
                self.failure = f"{verdict.reason}: {code} {headers.get(_DESCRIPTION, '')}".strip()
                log_event(log, "pull_failed", logging.ERROR, stream=self.consumer.stream, consumer=self.name,
                          status=code, reason=self.failure)
            self._recover(verdict.reason, immediate=False)

    # -- processing -----------------------------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                if len(self._buffer) <= MAX_SCRIPT_BATCH:
                    msgs, self._buffer = self._buffer, []
                else:
                    msgs = self._buffer[:MAX_SCRIPT_BATCH]
                    del self._buffer[:MAX_SCRIPT_BATCH]
                try:
                    await self._processor.process(msgs)
                except Exception:  # a bug must not stop the loop; the messages come back after ack_wait
                    log.exception("batch processing failed; %d messages will be redelivered", len(msgs))
                self.state.in_flight -= len(msgs)
                self._labels[1].set(self.state.in_flight)
                await self._pull()
            self._idle.set()

    # -- watchdog and recovery -----------------------------------------------------------

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            period = max(min(self.state.heartbeat, self.heartbeat or self.state.heartbeat) / 4, 0.05)
            slept_from = loop.time()
            await asyncio.sleep(period)
            loop_lag = loop.time() - slept_from - period
            state = self.state
            if not state.connected or self._recovery is not None or state.pending <= 0 or self.heartbeat <= 0:
                continue
            silent = time.monotonic() - self.last_activity
            if silent <= 2 * self.heartbeat:
                continue
            self.missed_in_a_row += 1
            self._metrics.missed_heartbeats.labels(self.name).inc()
            cause = (f"event loop blocked for {loop_lag:.2f}s" if loop_lag > self.heartbeat
                     else "pull request lost: connection stale, consumer deleted or leaderless")
            log_event(log, "missed_idle_heartbeat", logging.WARNING, stream=self.consumer.stream, consumer=self.name,
                      silent_s=round(silent, 3), heartbeat_s=self.heartbeat, misses_in_a_row=self.missed_in_a_row,
                      likely_cause=cause)
            self.state.pending = 0
            self._recover("missed_heartbeat", immediate=True)

    def _recover(self, reason: str, *, immediate: bool) -> None:
        if self._recovery is not None or self._stopping:
            return
        self._recovery = asyncio.get_running_loop().create_task(self._recover_loop(reason, immediate),
                                                               name=f"recover-{self.name}")
        self._update_paused()

    async def _recover_loop(self, reason: str, immediate: bool) -> None:
        attempt = self._recovery_attempt
        cap = max(RECOVERY_CAP_S, self.state.expires)
        try:
            while True:
                if not immediate:
                    await asyncio.sleep(backoff_delay(attempt, RECOVERY_BASE_S, cap))
                immediate = False
                attempt += 1
                if not self.state.connected:
                    continue
                try:
                    await self._provisioner.recover_consumer(self.consumer)
                except JetStreamError as exc:
                    verdict = classify(exc.code, exc.err_code, exc.description)
                    self._metrics.recoveries.labels(self.name, "failed").inc()
                    log_event(log, "consumer_check_failed", logging.WARNING, stream=self.consumer.stream,
                              consumer=self.name, reason=reason, error=str(exc), verdict=verdict.reason,
                              attempt=attempt)
                    continue
                except BridgeError as exc:  # stream missing in verify mode, config mismatch
                    self._metrics.recoveries.labels(self.name, "refused").inc()
                    self.failure = str(exc)
                    log_event(log, "consumer_check_failed", logging.ERROR, stream=self.consumer.stream,
                              consumer=self.name, reason=reason, error=str(exc), attempt=attempt)
                    continue
                self._metrics.recoveries.labels(self.name, "ok").inc()
                log_event(log, "consumer_checked", stream=self.consumer.stream, consumer=self.name, reason=reason,
                          attempt=attempt)
                break
        finally:
            self._recovery = None
            self._recovery_attempt = attempt
            self._update_paused()
        self.failure = None
        self.state.pending = 0
        self.last_activity = time.monotonic()
        await self._pull()

    # -- readiness -----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this consumer is not ready (empty when it is)."""
        problems: list[str] = []
        if self.failure:
            problems.append(self.failure)
        if self.missed_in_a_row >= self._max_missed:
            problems.append(f"missed {self.missed_in_a_row} idle heartbeats in a row")
        if self._recovery is not None:
            problems.append("recovering the consumer")
        recent = max(self.last_activity, self.last_pull)
        horizon = 2 * self.state.expires + 2 * self.state.heartbeat
        if not self._circuit_open and time.monotonic() - recent > horizon:
            problems.append(f"no pull, message or heartbeat for {time.monotonic() - recent:.1f}s")
        return problems
