"""The self-healing pull loop of one durable consumer (ADR-37, nats.go ``jetstream`` Consume).

The loop owns a private inbox and publishes ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
requests to it itself (nats-py's ``fetch(heartbeat=)`` sends a shortened expiry with the full
heartbeat and gets ``400 heartbeat value too large``, nats.py#794 and #986; the own request is
also ~4x cheaper; docs/nats-pitfalls.md#pull-request-heartbeats). Its request state is
:class:`~bridge.pull_request.PullState`, and
:func:`~bridge.pull_request.next_pull` is the ONE place that decides whether and what to pull
next (and clamps the heartbeat to expires/2 on every request).

* The inbox callback only files messages, parsed on arrival (:mod:`bridge.forming`), and never
  awaits Redis, so heartbeats are read even while an enqueue is slow; fetching runs ahead of
  enqueueing up to ``max_in_flight``.
* Statuses go through :func:`bridge.status.classify`.
* Watchdog: with a request outstanding, 2 x heartbeat without any message or status is a
  *missed idle heartbeat*: counted, logged for the first miss of a row with its likely cause, the
  consumer checked (re-created if gone) and a fresh pull issued. Never fatal.
* Every failure (a miss, a 503 or other 5xx, consumer deleted, a failed consumer check, an API
  timeout, a check slower than a heartbeat) and every healthy pull goes through the durable's
  NATS circuit (:mod:`bridge.nats_circuit`): ``max_missed_heartbeats`` failures in a row open it,
  and then only its probes check the consumer and pull, at growing intervals, until the first
  healthy pull closes it. Each state change is logged once and set on the gauge.
* Disconnect pauses the loop and the watchdog (failures of the old connection are not counted);
  reconnect forgets outstanding requests (they do not survive a server restart) and pulls at
  once, or, with the circuit open, probes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.errors import BridgeError, JetStreamError
from bridge.jsapi import DEFAULT_API_TIMEOUT_S
from bridge.metrics import BridgeMetrics
from bridge.nats_circuit import CircuitState, NatsCircuit, Transition, probe_cap
from bridge.process import JetStreamProcessor
from bridge.provision import Provisioner
from bridge.pull_request import NS, PullState, next_pull
from bridge.status import Action, classify
from runtime import log_event, stop_task
from settings import Consumer

__all__ = ["PullConsumer"]

log = logging.getLogger("bridge.pull")

#: Failed probes logged individually: the first ones, then one in this many (the rest are counted).
_PROBE_LOG_EVERY: Final = 50
#: Shortest time a consumer check waits for its answer, in seconds (loopback answers in milliseconds).
CHECK_TIMEOUT_FLOOR_S: Final = 1.0
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
      max_missed_heartbeats(int): Misses in a row before :meth:`problems` reports not ready, and
        failures in a row that open the NATS circuit.
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
        #: The subscription's queue of messages not yet handed to the callback (nats-py's own).
        self._queue: asyncio.Queue[Msg] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._recovery: asyncio.Task[None] | None = None
        self._kicks: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: The Redis circuit (bridge/circuit.py) is open: no pulls, nothing is wrong with NATS.
        self._redis_open = False
        #: Bumped on every disconnect: a failure of a request sent on an older connection is the
        #: connection's (already handled by the reconnect), not the durable's.
        self._epoch = 0
        self.circuit = NatsCircuit(max_missed_heartbeats, probe_cap(consumer.pull_expiry), consumer.idle_heartbeat)
        self._circuit_metrics = (metrics.nats_circuit_state.labels(self.name), metrics.nats_circuit_opened)
        self._circuit_metrics[0].set(CircuitState.CLOSED)
        self._probe_failures_logged: tuple[int, str] = (0, "")
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
        queue = getattr(self._sub, "_pending_queue", None)
        self._queue = queue if isinstance(queue, asyncio.Queue) else None
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
        self.circuit.configure(max_missed_heartbeats, probe_cap(consumer.pull_expiry), consumer.idle_heartbeat)
        self._processor.retune(consumer)
        log_event(log, "pull_retuned", stream=self.consumer.stream, consumer=self.name, batch=state.batch,
                  expires_s=state.expires, heartbeat_s=state.heartbeat, max_in_flight=state.max_in_flight,
                  max_missed_heartbeats=max_missed_heartbeats)
        self._kick()

    # -- connection and circuit events -----------------------------------------------------

    def on_disconnected(self) -> None:
        """Pause pulling and the watchdog."""
        self.state.connected = False
        self._epoch += 1

    def on_reconnected(self) -> None:
        """Outstanding requests died with the old connection: forget them and pull at once (with
        the NATS circuit open: probe at once, a new connection being the best reason to)."""
        self.state.connected = True
        self.state.pending = 0
        self.last_activity = time.monotonic()
        if self.circuit.state is not CircuitState.CLOSED:
            log_event(log, "nats_circuit_probing", stream=self.consumer.stream, consumer=self.name,
                      reason="reconnected")
            self._restart_recovery("reconnected")
            return
        log_event(log, "pull_reissued", stream=self.consumer.stream, consumer=self.name, reason="reconnected")
        if self._recovery is not None:  # a wait or a check on the old connection: check again now
            self._restart_recovery("reconnected")
            return
        self._kick()

    def set_circuit_open(self, is_open: bool) -> None:
        """Stop pulling while Redis is down; resume when it answers."""
        self._redis_open = is_open
        self._update_paused()
        if not is_open:
            self._kick()

    def _update_paused(self) -> None:
        self.state.paused = (self._stopping or self._redis_open or self._recovery is not None
                             or self.circuit.is_open)

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
        """The inbox's callback: file ``msg``, and every message already queued behind it.

        nats-py awaits the callback once per message from its subscription task (a queue get and a
        coroutine each); taking what is already queued in the same call files a burst of a pull's
        messages in one loop, in the same order, with the same bookkeeping (the task's
        ``task_done`` and pending-bytes accounting included, so a drain of the subscription still
        completes). The refill check runs once the burst is filed.
        """
        self.last_activity = time.monotonic()
        state = self.state
        queue, sub = self._queue, self._sub
        receive = self._processor.forming.add
        filed = 0
        while True:
            headers = msg.headers
            if headers is not None and not msg.reply and (status := headers.get(_STATUS)) is not None:
                if filed:
                    self._filed()  # before anything awaits
                await self._on_status(status, headers)
            else:
                filed += 1
                state.pending = state.pending - 1 if state.pending > 0 else 0
                state.in_flight += 1
                if self.missed_in_a_row or self.circuit.failures_in_a_row:
                    self._healthy("message")
                receive(msg)
            if queue is None or queue.empty():
                break
            msg = queue.get_nowait()
            # What nats-py's subscription task does for each message it takes from the queue.
            if sub is not None:
                sub._pending_size -= len(msg.data)
            queue.task_done()
        if filed:
            self._filed()
            if state.pending <= state.batch // 2:
                await self._pull()

    def _filed(self) -> None:
        """Messages are in the buffer: the processor has work (and stop() must wait for it)."""
        self._idle.clear()
        self._wake.set()

    async def _on_status(self, status: str, headers: dict[str, str]) -> None:
        try:
            code = int(status)
        except ValueError:
            code = 0
        self.statuses_seen[code] = self.statuses_seen.get(code, 0) + 1
        verdict = classify(code, 0, headers.get(_DESCRIPTION, ""))
        if verdict.action is Action.ACTIVITY:
            self._healthy(verdict.reason)
            return
        self._metrics.statuses.labels(self.name, verdict.reason).inc()
        if verdict.action is Action.PULL_ENDED:
            left = headers.get(_PENDING_MSGS)
            if left is not None:
                self.state.pending = max(0, self.state.pending - int(left))
            if verdict.reason != "request_limit":
                # The request lived its whole life on a consumer that answered: a healthy pull.
                self._healthy(verdict.reason)
            else:
                log_event(log, "pull_limited", logging.WARNING, stream=self.consumer.stream, consumer=self.name,
                          status=code, description=headers.get(_DESCRIPTION, ""))
            await self._pull()
        elif verdict.action is Action.REPULL:
            self.state.pending = 0
            log_event(log, "pull_reissued", stream=self.consumer.stream, consumer=self.name, reason=verdict.reason)
            if self._recovery is not None or self.circuit.state is not CircuitState.CLOSED:
                # A new leader announced itself: a consumer check still waiting on the leaderless
                # durable would wait out its whole API timeout (it gets no answer), and an open
                # circuit its next probe. Check again now, which the new leader answers at once.
                self._restart_recovery(verdict.reason)
                return
            await self._pull()
        else:
            detail = f"{code} {headers.get(_DESCRIPTION, '')}".strip()
            if verdict.terminal:
                self.failure = f"{verdict.reason}: {detail}"
                log_event(log, "pull_failed", logging.ERROR, stream=self.consumer.stream, consumer=self.name,
                          status=code, reason=self.failure)
            self.state.pending = 0
            self._fail(verdict.reason, detail, immediate=False)

    # -- processing -----------------------------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (formed := self._processor.forming.take()) is not None:
                try:
                    await self._processor.process(formed)
                except Exception:  # a bug must not stop the loop; the messages come back after ack_wait
                    log.exception("batch processing failed; %d messages will be redelivered", len(formed))
                self.state.in_flight -= len(formed)
                self._labels[1].set(self.state.in_flight)
                await self._pull()
            self._idle.set()

    # -- watchdog, recovery and the NATS circuit ------------------------------------------

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
            if self.missed_in_a_row == 1 and self.circuit.state is CircuitState.CLOSED:
                # One line per run of misses: the next ones are counted (metric, readiness) and,
                # if they open the circuit, named by its line; a dead path must not log a storm.
                log_event(log, "missed_idle_heartbeat", logging.WARNING, stream=self.consumer.stream,
                          consumer=self.name, silent_s=round(silent, 3), heartbeat_s=self.heartbeat,
                          likely_cause=cause)
            self.state.pending = 0
            self._fail("missed_heartbeat", f"silent for {silent:.1f}s: {cause}", immediate=True)

    def _healthy(self, what: str) -> None:
        """A healthy pull (message, heartbeat, a request that ended normally): reset the counts."""
        self.missed_in_a_row = 0
        change = self.circuit.success()
        if change is not None:
            self._announce(change)
            self._update_paused()

    def _fail(self, reason: str, detail: str, *, immediate: bool) -> None:
        """A pull failed: count it, then check the consumer and pull again (at once for a miss
        while the circuit is closed, as ADR-37 says; otherwise after the circuit's delay)."""
        if self._stopping or not self.state.connected:
            return  # the reconnect forgets outstanding requests and pulls again
        if self._recovery is not None:
            return  # the same fault seen by another request (each waiting pull hears "consumer deleted")
        was_closed = self._count_failure(reason, detail)
        self._start_recovery(reason, immediate=immediate and was_closed)

    def _count_failure(self, reason: str, detail: str) -> bool:
        """Feed a failure to the circuit; True when it was closed before (the caller logs it then)."""
        was_closed = self.circuit.state is CircuitState.CLOSED
        change = self.circuit.failure(reason, detail)
        if change is not None:
            self._announce(change)
        elif not was_closed:
            self._log_probe_failure(reason, detail)
        self._update_paused()
        return was_closed

    def _announce(self, change: Transition) -> None:
        """Gauge every change; log opening and closing once each (and failed probes sparingly)."""
        circuit = self.circuit
        self._circuit_metrics[0].set(change.new)
        if change.new is CircuitState.OPEN and change.old is CircuitState.CLOSED:
            self._circuit_metrics[1].labels(self.name, change.reason).inc()
            self._probe_failures_logged = (0, change.reason)
            log_event(log, "nats_circuit_opened", logging.WARNING, stream=self.consumer.stream, consumer=self.name,
                      reason=change.reason, failures_in_a_row=circuit.failures_in_a_row, error=circuit.detail,
                      probe_cap_s=circuit.probe_cap)
        elif change.new is CircuitState.OPEN:  # the half-open trial pull failed
            self._log_probe_failure(circuit.last_failure, circuit.detail)
        elif change.new is CircuitState.CLOSED:
            log_event(log, "nats_circuit_closed", stream=self.consumer.stream, consumer=self.name,
                      opened_by=circuit.reason, open_s=round(time.monotonic() - circuit.opened_at, 3),
                      probes=circuit.probes)

    def _log_probe_failure(self, reason: str, detail: str) -> None:
        # While open, a failure is logged when its reason changes and then once every
        # _PROBE_LOG_EVERY: an outage of an hour is a handful of lines, its count is in the metrics.
        count, last = self._probe_failures_logged
        count += 1
        if reason != last or count % _PROBE_LOG_EVERY == 0:
            log_event(log, "nats_circuit_probe_failed", logging.WARNING, stream=self.consumer.stream,
                      consumer=self.name, reason=reason, error=detail, probes=self.circuit.probes,
                      failures_in_a_row=self.circuit.failures_in_a_row)
            last = reason
        self._probe_failures_logged = (count, last)

    def _start_recovery(self, reason: str, *, immediate: bool) -> None:
        if self._recovery is not None or self._stopping:
            return
        self._recovery = asyncio.get_running_loop().create_task(self._recover_loop(reason, immediate),
                                                               name=f"recover-{self.name}")
        self._update_paused()

    def _restart_recovery(self, reason: str) -> None:
        """Check the consumer now, dropping a wait or a check on the old connection."""
        old, self._recovery = self._recovery, None
        if old is not None:
            old.cancel()
        self._start_recovery(reason, immediate=True)

    async def _recover_loop(self, reason: str, immediate: bool) -> None:
        me = asyncio.current_task()
        circuit = self.circuit
        try:
            while True:
                if not immediate:
                    await asyncio.sleep(circuit.delay())
                immediate = False
                if not self.state.connected:
                    return  # on_reconnected pulls (or probes) at once
                if await self._check_consumer(reason):
                    break
        finally:
            if self._recovery is me:
                self._recovery = None
                self._update_paused()
        self.state.pending = 0
        self.last_activity = time.monotonic()
        await self._pull()

    async def _check_consumer(self, reason: str) -> bool:
        """One consumer check (re-creating it if gone); True when it answered. Failures are counted."""
        circuit = self.circuit
        epoch = self._epoch
        circuit.probe_started()
        began = time.monotonic()
        # A leaderless durable (a cluster electing) leaves the check unanswered: waiting for the API's
        # own 5 s timeout would hold the pull back for that long after the new leader is there. An
        # answer later than the round-trip bound counts as a failure anyway, so the check gives up
        # there (never below CHECK_TIMEOUT_FLOOR_S) and the next one follows the circuit's schedule.
        within = min(DEFAULT_API_TIMEOUT_S, max(CHECK_TIMEOUT_FLOOR_S, circuit.rtt_bound))
        try:
            await asyncio.wait_for(self._provisioner.recover_consumer(self.consumer), within)
        except TimeoutError:
            self._metrics.recoveries.labels(self.name, "failed").inc()
            if await self._connection_answers(within):  # the server is there, the durable is not answering
                self._check_failed(reason, "api_timeout", f"consumer check unanswered after {within:.1f}s", epoch,
                                   logging.WARNING)
            return False
        except JetStreamError as exc:
            self._metrics.recoveries.labels(self.name, "failed").inc()
            verdict = classify(exc.code, exc.err_code, exc.description)
            self._check_failed(reason, verdict.reason, str(exc), epoch, logging.WARNING)
            return False
        except BridgeError as exc:  # stream missing in verify mode, config mismatch
            self._metrics.recoveries.labels(self.name, "refused").inc()
            self.failure = str(exc)
            self._check_failed(reason, _snake(type(exc).__name__), str(exc), epoch, logging.ERROR)
            return False
        round_trip = time.monotonic() - began
        self._metrics.recoveries.labels(self.name, "ok").inc()
        self.failure = None
        if circuit.state is CircuitState.CLOSED:
            log_event(log, "consumer_checked", stream=self.consumer.stream, consumer=self.name, reason=reason,
                      round_trip_ms=round(round_trip * 1000, 1))
        if circuit.slow(round_trip) and epoch == self._epoch:
            self._count_failure("slow_round_trip", f"consumer check took {round_trip:.2f}s")
        change = circuit.checked()  # open -> half-open: the trial pull goes out
        if change is not None:
            self._announce(change)
        return True

    async def _connection_answers(self, within: float) -> bool:
        """True when the server answers a PING within ``within`` seconds (at least 1 s).

        Tells a durable that does not answer (leaderless) from a connection that does not (a dead
        path, which the client's own PINGs will declare stale): only the first is the circuit's.
        """
        try:
            await self._nc.flush(timeout=max(math.ceil(within), 1))
        except (TimeoutError, nats.errors.Error, OSError):
            return False
        return True

    def _check_failed(self, reason: str, verdict: str, error: str, epoch: int, level: int) -> None:
        if epoch != self._epoch:
            return  # sent on a connection that died since: the reconnect's business, not the durable's
        if self._count_failure(verdict, error):
            log_event(log, "consumer_check_failed", level, stream=self.consumer.stream, consumer=self.name,
                      reason=reason, error=error, verdict=verdict, failures_in_a_row=self.circuit.failures_in_a_row)

    # -- readiness -----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this consumer is not ready (empty when it is)."""
        problems: list[str] = []
        circuit_problem = self.circuit.problem()
        if circuit_problem:
            problems.append(circuit_problem)
        if self.failure and self.failure not in (circuit_problem or ""):
            problems.append(self.failure)
        if self.missed_in_a_row >= self._max_missed:
            problems.append(f"missed {self.missed_in_a_row} idle heartbeats in a row")
        if self._recovery is not None and circuit_problem is None:
            problems.append("recovering the consumer")
        recent = max(self.last_activity, self.last_pull)
        horizon = 2 * self.state.expires + 2 * self.state.heartbeat
        if not self._redis_open and circuit_problem is None and time.monotonic() - recent > horizon:
            problems.append(f"no pull, message or heartbeat for {time.monotonic() - recent:.1f}s")
        return problems


def _snake(name: str) -> str:
    """``StreamMissing`` -> ``stream_missing`` (a refusal's metric label)."""
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")
