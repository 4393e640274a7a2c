"""The chaos scenario runner: the Procfile's processes against real servers, under seeded faults.

A :class:`Harness` owns, in one work dir:

- a nats-server (JetStream on a file store) and a redis-server (AOF, ``appendfsync`` of the
  scenario's choice), both from tests/servers.py, restartable on the same store / data dir;
- any number of *instances* of the Procfile's process types (``bridge``, ``worker``, ``web``):
  each runs the Procfile's own command line (``exec fechatter-notify bridge`` ...) with the
  venv's bin dir first on ``PATH``, in its own session, with its own free health/metrics port,
  its own log file, and the configuration :data:`CHAOS_CONFIG` (short timings, huge inboxes)
  written to ``notify.yml`` and named by ``$NOTIFY_CONFIG``.

Every process and server can be killed -9 (the whole process group: a worker's children too,
as when a container dies) and restarted; an instance can be sent a signal (:meth:`Harness.signal`,
e.g. SIGHUP after :meth:`Harness.rewrite_config`: a reload). :func:`fault_schedule` draws a seeded
schedule of such faults; :meth:`Harness.run_faults` plays it. :func:`run_scenario` is the generic scenario:
warm-up traffic, then the main traffic and the fault schedule at once, then a wait until the
system has settled, then the checks, giving a :class:`ScenarioResult` whose :meth:`line` is the
one line printed per scenario::

    scenario=<name> events=N faults=F lost=L duplicated=D dead_lettered=X recover_max_s=R

Definitions:

- ``events``: the events JetStream stored (at least one copy acknowledged), malformed ones
  included; ``faults``: kill -9s injected.
- ``lost`` / ``duplicated``: (user, notification) pairs missing from / repeated in the inboxes
  (tests/chaos/audit.py), counting only events JetStream stored.
- ``dead_lettered``: entries of the bridge's dead-letter stream.
- ``recover_max_s``: for each fault, the time from its kill -9 to the first inbox entry written
  for an event whose publication began after that kill (inbox entry ids are Redis server
  timestamps, on the same clock as the publisher's ``time.time()``): "events flow again",
  measured end to end whatever the fault hit. The maximum over the faults; faults after which
  no event was published are left out. Faults that overlap count from their own kill, so an
  outage that another fault prolongs is measured whole.

The scenario's invariants (:meth:`ScenarioResult.problems`): nothing lost, nothing duplicated,
nothing unexpected in an inbox; each malformed event exactly one dead letter with its reject
code and a reason; no other dead letter; no job in dramatiq's dead-letter queues.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import redis
from nats.aio.msg import Msg

from events.inbox import delivered_key, inbox_key, members_key
from events.queues import dead_letter_queue, delay_queue, messages_key
from fechatter_notify.embedded import free_port
from gateway.testing import SigningKey
from tests.chaos.audit import DEFAULT_NAMESPACE, Audit, Key, audit_inboxes, inbox_entries, notification_key
from tests.chaos.traffic import Event, Publisher, TrafficPlan, membership_known
from tests.pipeline import SHORT_TIMINGS
from tests.servers import NatsServer, RedisServer, WaitTimeout, async_wait_until, wait_until

__all__ = [
    "CHAOS_CONFIG",
    "Fault",
    "FaultRecord",
    "Harness",
    "Instance",
    "LogTail",
    "ScenarioResult",
    "drive_traffic",
    "fault_schedule",
    "logged_at",
    "procfile",
    "run_scenario",
    "settle",
]

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
#: Queues of the default settings (``queues.*``).
QUEUES = ("domain", "realtime")
DEAD_LETTER_STREAM = "dead-letters"
#: bridge/enqueue.py's DEDUPE_PREFIX and the default stream, to read the bridge's per-event markers.
BRIDGE_DEDUPE_PREFIX = "bridge:dedupe"
STREAM = "FECHATTER_EVENTS"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
AppendFsync = Literal["always", "everysec"]

#: Short timings so that every fault heals within seconds (tests/pipeline.py's SHORT_TIMINGS);
#: inboxes capped far above what a scenario delivers to one user (tests/chaos/audit.py).
CHAOS_CONFIG = SHORT_TIMINGS + """\
delivery:
  inbox_max_len: 10000000
  min_backoff: 100ms
  max_backoff: 2s
"""


def procfile() -> dict[str, str]:
    """The repository's Procfile: process type -> command line."""
    lines = (line.partition(":") for line in PROCFILE.read_text().splitlines() if ":" in line)
    return {name.strip(): command.strip() for name, _, command in lines if not name.startswith("#")}


def _get(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of GET ``url``, None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


# --------------------------------------------------------------------------- processes


@dataclass
class Instance:
    """One running copy of a Procfile process type (``bridge``, ``worker`` or ``web``)."""

    name: str
    role: str
    command: str
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0

    @property
    def ready_url(self) -> str:
        # The worker supervisor serves only /healthz; bridge and gateway say /readyz when they can work.
        return f"http://{HOST}:{self.port}/" + ("healthz" if self.role == "worker" else "readyz")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== harness: start #{self.starts} at {time.time():.3f}: {self.command}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(["/bin/sh", "-c", self.command], env=self.env, cwd=self.log_path.parent,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill(self) -> None:
        """kill -9 of the process group (the Procfile line ``exec``s, so its pid is the process)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.kills += 1
        proc.wait()
        # A worker's children are in the group too; reap whatever is left of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself, not its group: a worker supervisor signals its own
        children (on SIGHUP it replaces them; they ignore a hangup of the group)."""
        if self.proc is None or not self.running():
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self.proc.pid, sig)

    def ready(self) -> bool:
        if not self.running():
            return False
        return _get(self.ready_url) == 200

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- logs


def logged_at(line: str) -> float:
    """The ``ts=`` of a log line (UTC, ms), as a ``time.time()``."""
    match = re.search(r"\bts=(\S+)Z\b", line)
    assert match, line
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC).timestamp()


class LogTail:
    """An instance's log from an offset on, searched by ``event=`` and ``key=value`` fields.

    A field matches whole (``reason=reconnected`` is not ``reason=reconnected_late``).
    """

    def __init__(self, instance: Instance) -> None:
        self.path = instance.log_path
        self.offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace").splitlines()

    def events(self, event: str, **fields: object) -> list[str]:
        pattern = re.compile(rf"\bevent={re.escape(event)}(\s|$)")
        return [line for line in self.lines() if pattern.search(line)
                and all(re.search(rf"\b{key}={re.escape(str(value))}(\s|$)", line) for key, value in fields.items())]


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class Fault:
    """kill -9 ``target`` at ``at_s`` (seconds after the traffic started), restart ``down_s`` later."""

    at_s: float
    target: str
    down_s: float


@dataclass(slots=True)
class FaultRecord:
    """What happened to one fault: when (``time.time()``) the kill and the restart were done."""

    fault: Fault
    killed_at: float
    restarted_at: float | None = None
    error: str | None = None


def fault_schedule(seed: int, duration_s: float, every: Mapping[str, tuple[float, float]], *,
                   down_s: tuple[float, float] = (0.2, 1.5), start_s: float = 1.0) -> list[Fault]:
    """A seeded schedule: each target killed at intervals drawn from ``every[target]`` = (min, max)
    seconds, from ``start_s`` until ``duration_s``, each time down for a time drawn from ``down_s``."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    for target in sorted(every):
        low, high = every[target]
        at = start_s + rng.uniform(0, low)
        while at < duration_s:
            down = rng.uniform(*down_s)
            faults.append(Fault(round(at, 3), target, round(down, 3)))
            at += down + rng.uniform(low, high)
    return sorted(faults, key=lambda f: f.at_s)


# --------------------------------------------------------------------------- the harness

#: Harnesses not closed yet: an interrupted run (Ctrl-C in bench/chaos.py) still kills its processes at exit.
_OPEN: set[Harness] = set()


@atexit.register
def _close_all_at_exit() -> None:
    for harness in list(_OPEN):
        with contextlib.suppress(Exception):
            harness.close()


class Harness:
    """Servers, Procfile process instances and the operations on them (see the module docstring).

    Parameters:
      workdir: where config, logs and the servers' stores live (the caller removes it).
      config: notify.yml text (default :data:`CHAOS_CONFIG`).
      appendfsync: Redis AOF fsync policy: ``always`` (every acknowledged write on disk) or ``everysec``.
      namespace: ``redis.namespace`` of ``config``.
    """

    def __init__(self, workdir: Path, *, config: str = CHAOS_CONFIG, appendfsync: AppendFsync = "always",
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.appendfsync = appendfsync
        self.config_path = workdir / "notify.yml"
        self.config_path.write_text(config)
        self.nats = NatsServer(workdir=workdir / "nats", start_timeout=60)
        # tests/servers.py's aof=True means "always"; a later --appendfsync on the command line wins.
        self.redis = RedisServer(workdir=workdir / "redis", aof=True, start_timeout=120,
                                 extra_args=["--appendfsync", appendfsync])
        self.instances: dict[str, Instance] = {}
        self.key = SigningKey.generate()
        self.faults: list[FaultRecord] = []
        self._commands = procfile()
        _OPEN.add(self)

    # ------------------------------------------------------------------ lifecycle

    def start_servers(self) -> None:
        self.nats.start()
        self.redis.start()
        with self.client() as client:
            policy = client.config_get("appendfsync")["appendfsync"]
        assert policy == self.appendfsync, f"redis-server runs with appendfsync {policy}, not {self.appendfsync}"

    def client(self) -> redis.Redis:
        """A new sync client with short timeouts (the caller closes it)."""
        return self.redis.client(socket_timeout=10, socket_connect_timeout=2)

    def _env(self, role: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")
               and k not in {"NATS_URL", "REDIS_URL", "SENTRY_DSN", "DATABASE_URL", "PORT"}}
        env.update({"NATS_URL": self.nats.url, "REDIS_URL": self.redis.url, "NOTIFY_CONFIG": str(self.config_path),
                    "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                    "NOTIFY__HEALTH__HOST": HOST, "NOTIFY__METRICS__HOST": HOST})
        if role == "bridge":  # health and metrics on one port: one server serves both
            env.update({"NOTIFY__HEALTH__PORT": str(port), "NOTIFY__METRICS__PORT": str(port)})
        elif role == "worker":
            env.update({"NOTIFY__HEALTH__WORKER_PORT": str(port), "NOTIFY__METRICS__WORKER_PORT": str(port)})
        else:
            env.update({"NOTIFY_PORT": str(port), "NOTIFY__GATEWAY__JWT__PUBLIC_KEY": self.key.public_pem})
        return env

    def add(self, role: str, count: int = 1, args: Sequence[str] = ()) -> list[Instance]:
        """``count`` more instances of the Procfile's ``role`` line (``args`` appended), not started yet."""
        command = " ".join([self._commands[role], *args])
        added = []
        for _ in range(count):
            number = 1 + sum(i.role == role for i in self.instances.values())
            name, port = f"{role}-{number}", free_port()
            instance = Instance(name, role, command, self._env(role, port), self.workdir / f"{name}.log", port)
            self.instances[name] = added_one = instance
            added.append(added_one)
        return added

    def start(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else list(self.instances):
            self.instances[name].start()

    async def run_once(self, role: str, within_s: float = 120) -> None:
        """Run the Procfile's ``role`` line to its end, as a deploy runs ``release:`` (provision);
        raise with its log tail unless it exits 0. It is not kept among the instances."""
        (instance,) = self.add(role)
        instance.start()
        assert instance.proc is not None
        try:
            code = await asyncio.to_thread(instance.proc.wait, within_s)
        except subprocess.TimeoutExpired:
            instance.kill()
            raise RuntimeError(f"{instance.command} did not finish within {within_s:g} s:\n"
                               f"{instance.log_tail()}") from None
        finally:
            del self.instances[instance.name]  # ended: not a process to keep ready or to kill later
        if code != 0:
            raise RuntimeError(f"{instance.command} exited with {code}:\n{instance.log_tail()}")

    def wait_ready(self, names: Iterable[str] | None = None, timeout: float = 60) -> None:
        """Poll until every named instance (default: all) answers ready; a process that exits fails it."""
        chosen = [self.instances[n] for n in (names if names is not None else self.instances)]

        def ready() -> bool:
            for instance in chosen:
                if instance.proc is not None and instance.proc.poll() is not None:
                    raise AssertionError(f"{instance.name} exited with {instance.proc.returncode}:\n"
                                         f"{instance.log_tail()}")
            return all(i.ready() for i in chosen)

        wait_until(ready, timeout=timeout, interval=0.1,
                   message=lambda: "not ready: " + ", ".join(i.name for i in chosen if not i.ready()))

    def close(self) -> None:
        """kill -9 every instance, then the servers (whatever they hold is thrown away)."""
        _OPEN.discard(self)
        for instance in self.instances.values():
            instance.kill()
        self.nats.close(kill=True)
        self.redis.close(kill=True)

    # ------------------------------------------------------------------ faults

    def rewrite_config(self, text: str) -> None:
        """Replace notify.yml atomically (a rename): a process reloading meanwhile reads the old file
        or the new one, never half of it."""
        staged = self.config_path.with_name(self.config_path.name + ".new")
        staged.write_text(text)
        os.replace(staged, self.config_path)

    def signal(self, target: str, sig: int) -> None:
        """Send ``sig`` to an instance (by name), e.g. SIGHUP: reload the configuration."""
        self.instances[target].signal(sig)

    def kill(self, target: str) -> None:
        """kill -9 an instance (by name) or a server (``nats``, ``redis``)."""
        if target == "nats":
            self.nats.kill()
        elif target == "redis":
            self.redis.kill()
        else:
            self.instances[target].kill()

    def restart(self, target: str) -> None:
        """Start again what :meth:`kill` killed: servers on the same port and store, blocking until ready."""
        if target == "nats":
            self.nats.start()
        elif target == "redis":
            self.redis.start()
        else:
            self.instances[target].start()

    async def _play(self, t0: float, faults: Sequence[Fault]) -> None:
        for fault in faults:
            await asyncio.sleep(max(0.0, t0 + fault.at_s - time.time()))
            await asyncio.to_thread(self.kill, fault.target)
            record = FaultRecord(fault, killed_at=time.time())
            self.faults.append(record)
            await asyncio.sleep(fault.down_s)
            try:
                await asyncio.to_thread(self.restart, fault.target)
            except Exception as exc:  # recorded and reported; the scenario then fails on its problems
                record.error = f"restart failed: {type(exc).__name__}: {exc}"
                return
            record.restarted_at = time.time()

    async def run_faults(self, schedule: Sequence[Fault], t0: float) -> list[FaultRecord]:
        """Play ``schedule`` (times from ``t0``, a ``time.time()``): targets in parallel, each in order."""
        by_target: dict[str, list[Fault]] = {}
        for fault in schedule:
            by_target.setdefault(fault.target, []).append(fault)
        await asyncio.gather(*(self._play(t0, faults) for faults in by_target.values()))
        return self.faults

    # ------------------------------------------------------------------ state

    def consumer_state(self) -> dict[str, int]:
        """``num_pending`` and ``num_ack_pending`` summed over the durable consumers (monitoring port)."""
        jsz = self.nats.monitor("/jsz?accounts=true&streams=true&consumers=true")
        totals = {"num_pending": 0, "num_ack_pending": 0, "consumers": 0}
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                for consumer in stream.get("consumer_detail") or []:
                    totals["consumers"] += 1
                    totals["num_pending"] += int(consumer.get("num_pending", 0))
                    totals["num_ack_pending"] += int(consumer.get("num_ack_pending", 0))
        return totals

    def stream_messages(self) -> int:
        """Messages the JetStream streams hold (monitoring port)."""
        jsz = self.nats.monitor("/jsz?accounts=true&streams=true")
        return sum(int(stream.get("state", {}).get("messages", 0))
                   for account in jsz.get("account_details") or [] for stream in account.get("stream_detail") or [])

    def jobs_waiting(self, client: redis.Redis) -> int:
        """Jobs in dramatiq's queues and delay queues (a job leaves ``.msgs`` when acked)."""
        keys = [messages_key(self.namespace, q) for q in QUEUES]
        keys += [messages_key(self.namespace, delay_queue(q)) for q in QUEUES]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hlen(key)
            return sum(pipe.execute())

    def failed_jobs(self, client: redis.Redis) -> int:
        """Jobs in dramatiq's dead-letter queues."""
        with client.pipeline(transaction=False) as pipe:
            for q in QUEUES:
                pipe.zcard(f"{self.namespace}:{dead_letter_queue(q)}")
            return sum(pipe.execute())

    def inbox_total(self, client: redis.Redis, users: Iterable[int]) -> int:
        with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.xlen(inbox_key(self.namespace, user))
            return sum(pipe.execute())

    def dead_letters(self, client: redis.Redis) -> list[dict[str, str]]:
        """Every entry of the bridge's dead-letter stream, fields decoded (``data`` left out)."""
        entries = client.xrange(f"{self.namespace}:{DEAD_LETTER_STREAM}")
        return [{k.decode(): v.decode(errors="replace") for k, v in fields.items() if k != b"data"}
                for _, fields in entries]

    def probe(self, client: redis.Redis, event: Event, users: list[int]) -> str:
        """Where a lost event's trail ends in Redis: each copy's bridge marker (the dramatiq message id it
        enqueued, "dead-letter", or none) and whether that job still waits; the first users' delivered
        markers; the chat's membership cache size."""
        parts = []
        ack_sets = list(client.scan_iter(f"{self.namespace}:__acks__.*", count=1000))
        for copy in event.copies:
            marker = client.get(f"{self.namespace}:{BRIDGE_DEDUPE_PREFIX}:{STREAM}:id:{copy.msg_id}")
            waiting = bool(marker) and any(client.hexists(messages_key(self.namespace, q), marker) for q in QUEUES)
            # A job fetched by a worker and never acked sits in that worker's ack set (dramatiq's layout).
            held = [k.decode() for k in ack_sets if marker and client.sismember(k, marker)]
            parts.append(f"{copy.dialect}: marker={marker!r} waiting={waiting} held_by={held}")
        beats: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
            f"{self.namespace}:__heartbeats__", 0, -1, withscores=True)
        ages = [(broker.decode()[:8], round(time.time() - ms / 1000, 1)) for broker, ms in beats]
        parts.append(f"worker heartbeats (broker, age s)={ages}")
        shared = f"{event.chat.id}:{event.message_id}"
        for user in users[:3]:
            parts.append(f"delivered:{user}={client.exists(delivered_key(self.namespace, user, shared))}")
        cached = client.scard(members_key(self.namespace, event.chat.id))
        parts.append(f"members cached={cached}/{len(event.chat.members)}")
        return " ".join(parts)

    def classify_lost(self, client: redis.Redis, plan: TrafficPlan, audit: Audit) -> dict[str, int]:
        """Lost events by where their trail ends: ``held_by_worker`` (a copy's job was fetched by a
        worker and sits in its ack set, never processed), ``queued`` (a job still waits in a queue),
        ``no_job`` (the bridge enqueued a copy, the job is gone: processed without the notification,
        or lost by Redis), ``not_enqueued`` (no copy has a bridge marker: never enqueued, or lost by Redis)."""
        held: set[bytes] = set()
        for key in client.scan_iter(f"{self.namespace}:__acks__.*", count=1000):
            held.update(client.smembers(key))
        by_key, counts = plan.by_key(), dict.fromkeys(("held_by_worker", "queued", "no_job", "not_enqueued"), 0)
        for key in audit.by_key_lost:
            event = by_key[key]
            markers = [client.get(f"{self.namespace}:{BRIDGE_DEDUPE_PREFIX}:{STREAM}:id:{c.msg_id}")
                       for c in event.copies]
            jobs = [m for m in markers if m and m != b"dead-letter"]
            if any(j in held for j in jobs):
                counts["held_by_worker"] += 1
            elif any(client.hexists(messages_key(self.namespace, q), j) for j in jobs for q in QUEUES):
                counts["queued"] += 1
            elif jobs:
                counts["no_job"] += 1
            else:
                counts["not_enqueued"] += 1
        return counts

    def logs(self, lines: int = 25) -> str:
        """The tail of every process's and server's log, for an assertion message."""
        parts = [f"--- {i.name} (starts={i.starts} kills={i.kills}) ---\n{i.log_tail(lines)}"
                 for i in self.instances.values()]
        parts.append(f"--- nats-server ---\n{self.nats.log_tail(lines)}")
        parts.append(f"--- redis-server ---\n{self.redis.log_tail(lines)}")
        return "\n".join(parts)


# --------------------------------------------------------------------------- the result


@dataclass
class ScenarioResult:
    scenario: str
    events: int
    faults: list[FaultRecord]
    audit: Audit
    dead_letters: list[dict[str, str]]
    #: Problems with the dead letters: a malformed event missing, doubled or with the wrong code; others.
    dead_letter_problems: list[str]
    failed_jobs: int
    recover_s: list[float]
    published_s: float
    settled_s: float
    settle_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The lost events, each with its copies, sequences and publication time (for the failure message).
    lost_events: list[str] = field(default_factory=list)

    @property
    def recover_max_s(self) -> float | None:
        return max(self.recover_s) if self.recover_s else None

    def line(self) -> str:
        recover = "n/a" if self.recover_max_s is None else f"{self.recover_max_s:.1f}"
        return (f"scenario={self.scenario} events={self.events} faults={len(self.faults)} lost={self.audit.lost} "
                f"duplicated={self.audit.duplicated} dead_lettered={len(self.dead_letters)} recover_max_s={recover}")

    def problems(self) -> list[str]:
        found = []
        if not self.audit.ok():
            found.append(self.audit.summary())
            found.append(f"lost events by cause: {self.extra.get('lost_events_by_cause')}")
            found += self.lost_events
        found += self.dead_letter_problems
        if self.failed_jobs:
            found.append(f"{self.failed_jobs} jobs in dramatiq's dead-letter queues")
        found += [f"fault {r.fault}: {r.error}" for r in self.faults if r.error]
        acked, held = self.extra.get("acked_seqs", 0), self.extra.get("stream_messages", 0)
        if held < acked:
            found.append(f"JetStream holds {held} messages but acknowledged {acked} distinct sequences")
        if self.settle_error:
            found.append(f"did not settle: {self.settle_error}")
        return found


def check_dead_letters(plan: TrafficPlan, letters: Sequence[dict[str, str]]) -> list[str]:
    """Each malformed event stored: one dead letter with its code and a reason; no other dead letter."""
    by_id: dict[str, list[dict[str, str]]] = {}
    for letter in letters:
        msg_id = json.loads(letter.get("headers") or "{}").get("Nats-Msg-Id", "")
        by_id.setdefault(msg_id, []).append(letter)
    problems: list[str] = []
    malformed = {c.msg_id: e for e in plan.events if e.malformed and e.stored for c in e.copies}
    for msg_id, event in malformed.items():
        got = by_id.get(msg_id, [])
        if len(got) != 1:
            problems.append(f"malformed {msg_id} ({event.reject_code}): {len(got)} dead letters, not 1")
        elif got[0].get("code") != event.reject_code or not got[0].get("reason"):
            problems.append(f"malformed {msg_id}: dead letter code={got[0].get('code')!r} "
                            f"reason={got[0].get('reason')!r}, expected code {event.reject_code!r} and a reason")
    others = [(k, [(x.get("code"), x.get("reason")) for x in v]) for k, v in by_id.items() if k not in malformed]
    if others:
        problems.append(f"{sum(len(v) for _, v in others)} dead letters of good events: {others[:10]}")
    return problems


def recover_times(client: redis.Redis, namespace: str, plan: TrafficPlan, faults: Sequence[FaultRecord]) -> list[float]:
    """Per fault, seconds from its kill to the first inbox entry of an event published after it."""
    by_key = plan.by_key()
    first: dict[int, float] = {}  # event index -> first inbox entry time
    for user in plan.users:
        for entry_id, notification in inbox_entries(client, namespace, user):
            key = notification_key(notification)
            event = by_key.get(key) if key is not None else None
            if event is None:
                continue
            at = int(entry_id.split("-", 1)[0]) / 1000
            if at < first.get(event.index, float("inf")):
                first[event.index] = at
    timeline = sorted((e.published_at, first[e.index]) for e in by_key.values()
                      if e.published_at is not None and e.index in first)
    # Suffix minimum: the earliest delivery among events published at or after each point.
    suffix: list[float] = [0.0] * len(timeline)
    best = float("inf")
    for i in range(len(timeline) - 1, -1, -1):
        best = min(best, timeline[i][1])
        suffix[i] = best
    published = [p for p, _ in timeline]
    times = []
    for record in faults:
        i = _bisect_left(published, record.killed_at)
        if i < len(timeline):
            times.append(max(0.0, suffix[i] - record.killed_at))
    return times


def describe_lost(plan: TrafficPlan, audit: Audit, faults: Sequence[FaultRecord], given_up: Iterable[int] = (),
                  probe: Callable[[Event, list[int]], str] | None = None, limit: int = 10) -> list[str]:
    """The lost events (most users first): dialects, stream sequences (``!`` marks one JetStream gave up
    on after max_deliver deliveries), when published, which faults were near."""
    by_key, max_delivered = plan.by_key(), set(given_up)
    lines = []
    for key, users in audit.by_key_lost.most_common(limit):
        event = by_key[key]
        at = event.published_at or 0.0
        near = [f"{r.fault.target}@{r.killed_at - at:+.1f}s" for r in faults if abs(r.killed_at - at) < 15]
        copies = [(c.dialect, _seq(event.seqs.get(c.msg_id), max_delivered)) for c in event.copies]
        lost_for = [u for u, one in audit.users.items() if key in one.lost]
        lines.append(f"lost {key} for {users} of {len(list(event.recipients()))} recipients: copies {copies} "
                     f"published at {at:.3f}; faults around it: {near}"
                     + (f"; {probe(event, lost_for)}" if probe is not None else ""))
    return lines


def _seq(seq: int | None, max_delivered: set[int]) -> str:
    return f"{seq}!" if seq in max_delivered else str(seq)


def _bisect_left(values: Sequence[float], x: float) -> int:
    low, high = 0, len(values)
    while low < high:
        mid = (low + high) // 2
        if values[mid] < x:
            low = mid + 1
        else:
            high = mid
    return low


# --------------------------------------------------------------------------- the generic scenario


async def _settle(h: Harness, plan: TrafficPlan, expected_total: int, patience_s: float) -> str | None:
    """Wait until JetStream has nothing pending, dramatiq nothing waiting and the inboxes hold at
    least the expected count; None, or what was still not so at the deadline."""
    state: dict[str, Any] = {}

    def settled() -> bool:
        with h.client() as client:
            state.update(h.consumer_state(), jobs=h.jobs_waiting(client),
                         inboxes=h.inbox_total(client, plan.users), expected=expected_total)
        return (state["num_pending"] == 0 and state["num_ack_pending"] == 0 and state["jobs"] == 0
                and state["inboxes"] >= expected_total)

    try:
        await async_wait_until(lambda: asyncio.to_thread(settled), timeout=patience_s, interval=0.5,
                               ignore=(redis.RedisError, OSError))
    except WaitTimeout:
        return f"{state}"
    return None


async def settle(h: Harness, plan: TrafficPlan, expected: Mapping[int, Sequence[Key]],
                 patience_s: float) -> tuple[str | None, float]:
    """After the traffic: wait for everything ``expected`` to have settled (see :func:`_settle`);
    ``(None or what was still not so at the deadline, seconds waited)``."""
    began = time.time()
    error = await _settle(h, plan, sum(len(keys) for keys in expected.values()), patience_s)
    return error, time.time() - began


async def drive_traffic(h: Harness, publisher: Publisher, plan: TrafficPlan, schedule: Sequence[Fault],
                        rate: float | None) -> float:
    """``plan.warmup``, then (once every chat's membership is cached, so the main traffic is not
    a cold start) ``plan.main`` at ``rate`` while ``schedule`` runs; the seconds the main part took."""
    await publisher.publish(plan.warmup)
    with h.client() as client:
        await async_wait_until(lambda: membership_known(client, plan.chats, h.namespace), timeout=60,
                               interval=0.2, message="the warm-up did not fill every chat's membership cache")
    t0 = time.time()
    traffic = asyncio.create_task(publisher.publish(plan.main, rate))
    await h.run_faults(schedule, t0)
    await traffic
    return time.time() - t0


async def run_scenario(h: Harness, name: str, plan: TrafficPlan, schedule: Sequence[Fault], *,
                       rate: float | None = None, settle_timeout: float = 60) -> ScenarioResult:
    """Warm-up, then ``plan.main`` at ``rate`` during ``schedule``, then settle and check.

    The harness's servers must be started and its instances ready. Killed instances are
    restarted by the schedule itself; after it, every instance must come back ready.
    """
    publisher = await Publisher.connect(h.nats.url)
    # JetStream announces each message it gives up on (max_deliver reached) on core NATS, once: listen
    # too, so a message whose advisory no bridge heard is recognised as such in a failure message.
    given_up: list[int] = []

    async def advisory(msg: Msg) -> None:
        given_up.append(int(json.loads(msg.data).get("stream_seq", 0)))

    await publisher.nc.subscribe(f"{MAX_DELIVERIES_ADVISORY}.>", cb=advisory)
    try:
        published_s = await drive_traffic(h, publisher, plan, schedule, rate)
    finally:
        await publisher.close()
    await asyncio.to_thread(h.wait_ready, None, 120)
    stored: list[Event] = [e for e in plan.events if e.stored]
    expected = plan.expected(stored)
    settle_error, settled_s = await settle(h, plan, expected, settle_timeout)
    with h.client() as client:
        audit = await asyncio.to_thread(audit_inboxes, client, expected, namespace=h.namespace)
        letters = h.dead_letters(client)
        failed = h.failed_jobs(client)
        recover = await asyncio.to_thread(recover_times, client, h.namespace, plan, h.faults)
        lost = describe_lost(plan, audit, h.faults, given_up, lambda e, users: h.probe(client, e, users))
        lost_by_cause = h.classify_lost(client, plan, audit) if audit.lost else {}
    return ScenarioResult(name, len(stored), list(h.faults), audit, letters, check_dead_letters(plan, letters),
                          failed, recover, published_s, settled_s, settle_error,
                          extra={"retries": publisher.retries, "duplicate_acks": publisher.duplicates,
                                 "acked_seqs": len({seq for e in stored for seq in e.seqs.values()}),
                                 "stream_messages": h.stream_messages(), "max_deliveries": len(given_up),
                                 "lost_events_by_cause": lost_by_cause},
                          lost_events=lost)
