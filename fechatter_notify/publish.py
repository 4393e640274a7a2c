"""``fechatter-notify publish``: a demo and smoke tool that plays one chat's life on NATS.

It publishes what Fechatter's server publishes for a chat of the given members, at a given rate:
messages (each in the four dialects one send produces, plus the legacy and internally tagged
shapes), typing, read receipts, presence, edits, deletes, membership changes, unread marks,
duplicates and a broadcast. Every payload is first decoded with the bridge's own event contract
(:func:`events.parse.parse_event`), so the tool can never demonstrate a shape the bridge would
dead-letter. Subjects a configured JetStream stream captures are published to JetStream (and
each PubAck awaited); the others, ``fechatter.realtime.>``, on core NATS, as Fechatter does.

With ``--watch USER`` it opens that user's SSE stream on the gateway first and prints each
frame as it arrives. Where to publish and watch comes from flags, else ``$NATS_URL`` or a
``--config`` file, else the running ``fechatter-notify dev`` (its state file); with none of
these it stops with a message rather than guess a server on the default ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events import matches
from fechatter_notify.devstate import DevState, NoDevState, choose_server, find_state
from gateway import read_frames
from runtime import RET_CONFIG, RET_OK, RET_RUNTIME
from settings import DurationError, Loaded, parse_duration, redact_url

#: A subject every configured stream must capture before anything is published.
PROBE_SUBJECT = "fechatter.message.new"


class UsageError(Exception):
    """Nothing says where to publish or watch; the message says what to pass."""


def _members(text: str) -> list[int]:
    try:
        members = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of user ids") from None
    if len(members) < 2 or len(set(members)) != len(members):
        raise argparse.ArgumentTypeError("a chat needs at least two distinct members, e.g. 1,7,9")
    return members


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``publish``'s options."""
    parser.add_argument("--chat", type=int, default=42, help="chat id (default 42)")
    parser.add_argument("--members", type=_members, default=[1, 7, 9], help="member user ids (default 1,7,9)")
    parser.add_argument("--rate", type=_positive, default=5.0, help="events per second (default 5); "
                        "one event is what one Fechatter request publishes, e.g. a message in 4 dialects")
    parser.add_argument("--duration", type=_duration, default=None,
                        help="how long to publish, e.g. 10s (default 10s unless --count is given)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many events")
    parser.add_argument("--watch", type=int, default=None, metavar="USER",
                        help="open USER's stream on the gateway and print each frame that arrives")
    parser.add_argument("--linger", type=_duration, default=3.0,
                        help="with --watch: how long to keep watching after the last publish (default 3s)")
    parser.add_argument("--nats", metavar="URL", help="NATS to publish to (default: $NATS_URL, a --config "
                        "file, else the running `fechatter-notify dev`)")
    parser.add_argument("--gateway", metavar="URL", help="gateway for --watch (default: the running dev's)")
    parser.add_argument("--token", help="access token for --watch (default: signed with the running dev's key)")


# --------------------------------------------------------------------------- the chat's events


@dataclass(frozen=True)
class Publication:
    """One payload on one subject; ``kind`` is the event it is a copy of."""

    kind: str
    dialect: str
    subject: str
    payload: dict[str, Any]

    def data(self) -> bytes:
        return json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")).encode()


def _z(at: datetime, digits: int = 6) -> str:
    """chrono's ``DateTime<Utc>``: ``Z``, 6 digits read back from Postgres, 9 from ``Utc::now()``."""
    fraction = f"{at.microsecond:06d}" + "417"[: max(0, digits - 6)]
    return f"{at:%Y-%m-%dT%H:%M:%S}.{fraction}Z"


def _rfc3339(at: datetime) -> str:
    """``Utc::now().to_rfc3339()``: nanoseconds and ``+00:00`` (read_at, deleted_at, last_seen)."""
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond:06d}512+00:00"


CONTENTS = ("Hi team", "Standup in 5 minutes", "Can someone review my PR?", "Shipped it 🚀",
            "Lunch at noon?", "The build is green again", "Notes from the design review are in the doc")


@dataclass
class ChatScript:
    """One chat's life, as the actions Fechatter's HTTP routes would publish, in a cycle."""

    chat_id: int
    members: list[int]
    #: Message ids are unique per run (milliseconds since the epoch), so a second run is not deduplicated.
    next_id: int = field(default_factory=lambda: int(time.time() * 1000))
    step: int = 0
    last: dict[str, Any] = field(default_factory=dict)

    def name(self, user: int) -> str:
        return f"User {user}"

    def actions(self) -> Iterator[list[Publication]]:
        """Endless: each item is one event (one Fechatter request) and its copies."""
        cycle: tuple[Callable[[int], list[Publication]], ...] = (
            # A message first: its member list is what tells the workers who is in the chat.
            self.send, self.read, self.typing_started, self.typing_stopped, self.presence, self.send_legacy,
            self.edit, self.bulk_read, self.leave, self.join, self.delete, self.unread, self.duplicate,
            self.broadcast)
        while True:
            turn = self.step // len(cycle)
            yield cycle[self.step % len(cycle)](turn)
            self.step += 1

    def _who(self, turn: int, offset: int = 0) -> int:
        return self.members[(turn + offset) % len(self.members)]

    def _realtime(self, suffix: str = "") -> str:
        return f"fechatter.realtime.chat.{self.chat_id}{suffix}"

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def typing_started(self, turn: int) -> list[Publication]:
        """Someone starts a reply to the message just sent."""
        user = self._who(turn, 1)
        body = {"TypingStarted": {"chat_id": self.chat_id, "user_id": user, "user_name": self.name(user)}}
        return [Publication("typing_started", "R", self._realtime(".typing"), body)]

    def typing_stopped(self, turn: int) -> list[Publication]:
        body = {"TypingStopped": {"chat_id": self.chat_id, "user_id": self._who(turn, 1)}}
        return [Publication("typing_stopped", "R", self._realtime(".typing"), body)]

    def _message(self, sender: int, now: datetime) -> dict[str, Any]:
        message = {"id": self._new_id(), "chat_id": self.chat_id, "sender_id": sender,
                   "content": CONTENTS[self.next_id % len(CONTENTS)], "files": [], "created_at": _z(now),
                   "idempotency_key": str(uuid.uuid4())}
        return message

    def _stream_message(self, message: dict[str, Any], now: datetime) -> dict[str, Any]:
        # StreamMessage: the id is a string and the time unix seconds.
        return {"id": str(message["id"]), "chat_id": self.chat_id, "sender_id": message["sender_id"],
                "content": message["content"], "files": [], "timestamp": int(now.timestamp())}

    def _core(self, kind: str, message: dict[str, Any], members: list[int], now: datetime) -> dict[str, Any]:
        return {"version": "V1", "kind": kind, "msg": message, "members": members, "occurred_at": _z(now, 9)}

    def _unified(self, kind: str, message: dict[str, Any], now: datetime) -> dict[str, Any]:
        sender = message["sender_id"]
        return {**self._core(kind, message, [sender], now), "sender_name": self.name(sender),
                "chat_name": f"Chat {self.chat_id}", "workspace_id": 1, "event_id": str(uuid.uuid4()),
                "trace_context": {}}

    def _flat(self, event_type: str, message: dict[str, Any], content: str, at: str) -> dict[str, Any]:
        sender = message["sender_id"]
        return {"event_type": event_type, "chat_id": self.chat_id, "sender_id": sender,
                "sender_name": self.name(sender), "content": content, "files": [], "timestamp": at,
                "message_id": message["id"], "workspace_id": 1}

    def send(self, turn: int) -> list[Publication]:
        """``POST /chat/{id}/messages``: the same message in four dialects, as Fechatter sends it."""
        now = datetime.now(UTC)
        message = self.last["message"] = self._message(self._who(turn), now)
        received = {"MessageReceived": {"message": self._stream_message(message, now), "chat_id": self.chat_id,
                                        "recipients": self.members}}
        return [
            Publication("new_message", "R", self._realtime(), received),
            Publication("new_message", "N", "fechatter.message.new",
                        self._flat("new_message", message, message["content"], message["created_at"])),
            Publication("new_message", "C", "fechatter.message.created",
                        self._core("Created", message, self.members, now)),
            Publication("new_message", "U", "fechatter.messages.message.created.v1",
                        self._unified("Created", message, now)),
        ]

    def send_legacy(self, turn: int) -> list[Publication]:
        """A message in the legacy publisher's shape and the internally tagged realtime shape."""
        now = datetime.now(UTC)
        message = {**self._message(self._who(turn, 1), now), "files": None, "idempotency_key": None}
        self.last["legacy"] = message
        tagged = {"type": "MessageReceived", "message": self._stream_message(message, now),
                  "chat_id": self.chat_id, "recipients": self.members}
        return [
            Publication("new_message", "L", "fechatter.messages.created",
                        {"message": message, "chat_members": self.members}),
            Publication("new_message", "T", self._realtime(), tagged),
        ]

    def read(self, turn: int) -> list[Publication]:
        body = {"MessageRead": {"message_id": self.last["message"]["id"], "chat_id": self.chat_id,
                                "reader_id": self._who(turn, 1), "read_at": _rfc3339(datetime.now(UTC))}}
        return [Publication("message_read", "R", self._realtime(".read"), body)]

    def presence(self, turn: int) -> list[Publication]:
        user = self._who(turn, 1)
        body = {"UserPresence": {"user_id": user, "status": ("online", "away")[turn % 2],
                                 "last_seen": _rfc3339(datetime.now(UTC))}}
        return [Publication("user_presence", "R", f"fechatter.realtime.user.{user}.presence", body)]

    def edit(self, turn: int) -> list[Publication]:
        now = datetime.now(UTC)
        message = {**self.last["message"], "content": self.last["message"]["content"] + " (edited)"}
        return [
            Publication("message_edited", "N", "fechatter.message.edited",
                        self._flat("message_edited", message, "✏️ [EDITED] " + message["content"], _z(now, 9))),
            Publication("message_edited", "C", "fechatter.message.updated",
                        self._core("Updated", message, self.members, now)),
            Publication("message_edited", "U", "fechatter.messages.message.edited.v1",
                        self._unified("Updated", message, now)),
        ]

    def bulk_read(self, turn: int) -> list[Publication]:
        ids = [self.last["message"]["id"], self.last["legacy"]["id"]]
        body = {"event_type": "messages_read", "chat_id": self.chat_id, "user_id": self._who(turn, 2),
                "message_ids": sorted(ids), "read_at": _z(datetime.now(UTC), 9)}
        return [Publication("messages_read", "N", "fechatter.realtime.read_receipts", body)]

    def _membership(self, joined: bool) -> list[Publication]:
        # The last member leaves, then joins again: the chat's membership is the same after a cycle.
        user, now = self.members[-1], datetime.now(UTC)
        kind, verb, word = ("member_joined", "joined", "member_added") if joined else \
            ("member_left", "left", "member_removed")
        core = {"version": "V1", "chat_id": self.chat_id, "user_id": user, "occurred_at": _z(now, 9)}
        return [
            Publication(kind, "N", f"fechatter.chat.member_{verb}",
                        {"event_type": word, "chat_id": self.chat_id, "user_id": user,
                         "user_name": self.name(user), "timestamp": _z(now, 3)}),
            Publication(kind, "C", f"fechatter.chat.{verb}", core),
            Publication(kind, "U", f"fechatter.chats.member.{verb}.v1",
                        {**core, "user_name": self.name(user), "event_id": str(uuid.uuid4())}),
            Publication(kind, "L", f"fechatter.chats.member.{verb}",
                        {"chat_id": self.chat_id, "user_id": user, "joined_at": _z(now)}),
        ]

    def leave(self, turn: int) -> list[Publication]:
        return self._membership(joined=False)

    def join(self, turn: int) -> list[Publication]:
        return self._membership(joined=True)

    def delete(self, turn: int) -> list[Publication]:
        """The legacy message is deleted by its sender, in every shape a delete is published in."""
        now, message = datetime.now(UTC), {**self.last["legacy"], "files": [], "idempotency_key": None}
        deleted = {"MessageDeleted": {"message_id": message["id"], "chat_id": self.chat_id,
                                      "deleted_by": message["sender_id"], "deleted_at": _rfc3339(now)}}
        return [
            Publication("message_deleted", "N", "fechatter.message.deleted",
                        self._flat("message_deleted", message, "🗑️ [Message Deleted]", _z(now, 9))),
            Publication("message_deleted", "C", "fechatter.message.deleted",
                        self._core("Deleted", message, self.members, now)),
            Publication("message_deleted", "R", self._realtime(".deleted"), deleted),
            Publication("message_deleted", "U", "fechatter.messages.message.deleted.v1",
                        self._unified("Deleted", message, now)),
        ]

    def unread(self, turn: int) -> list[Publication]:
        body = {"MessageUnread": {"message_id": self.last["message"]["id"], "chat_id": self.chat_id,
                                  "user_id": self._who(turn, 2)}}
        return [Publication("message_unread", "R", self._realtime(".unread"), body)]

    def duplicate(self, turn: int) -> list[Publication]:
        """The sender retried a message with the same idempotency key."""
        message = self.last["message"]
        base = {"idempotency_key": message["idempotency_key"], "chat_id": self.chat_id,
                "sender_id": message["sender_id"]}
        return [
            Publication("duplicate_message", "C", "fechatter.message.duplicate",
                        {"version": "V1", **base, "occurred_at": _z(datetime.now(UTC), 9)}),
            Publication("duplicate_message", "L", "fechatter.messages.duplicate", base),
        ]

    def broadcast(self, turn: int) -> list[Publication]:
        body = {"target_users": self.members,
                "event_data": {"type": "announcement", "chat_id": self.chat_id, "text": "Maintenance at 22:00 UTC"}}
        return [Publication("broadcast", "B", "fechatter.broadcast", body)]


# --------------------------------------------------------------------------- where to


@dataclass(frozen=True)
class Targets:
    nats_url: str
    nats_reason: str
    gateway_url: str | None
    token: str | None


def resolve_targets(loaded: Loaded, args: argparse.Namespace) -> Targets:
    """Flags, then the environment or an explicit --config, then the running dev.

    Raises:
      UsageError: nothing names a NATS server (or, with --watch, a gateway and a token).
    """
    choice = choose_server(loaded, ("nats", "servers"), "--nats", args.nats, os.environ, args)
    state: DevState | None = None
    missing: str | None = None
    try:
        state = find_state()
    except NoDevState as exc:
        missing = str(exc)
    if choice.url is not None:
        nats_url, reason = choice.url, choice.reason
    elif state is not None:
        nats_url, reason = state.nats_url, f"from the running dev, pid {state.pid}"
    else:
        raise UsageError(f"no NATS server to publish to. {missing} Or name one: --nats URL or $NATS_URL.")
    if args.watch is None:
        return Targets(nats_url, reason, None, None)
    gateway = args.gateway or (state.gateway_url if state else None)
    if gateway is None:
        raise UsageError(f"--watch needs the gateway: pass --gateway URL. {missing}")
    token = args.token
    if token is None:
        if state is None or state.signing_key is None:
            raise UsageError("--watch needs an access token: pass --token, or run `fechatter-notify dev` "
                             "without gateway.jwt.public_key so that it makes a signing key")
        token = state.sign(args.watch)
    return Targets(nats_url, reason, gateway.rstrip("/"), token)


# --------------------------------------------------------------------------- publishing


@dataclass
class Tally:
    """What was published, per event kind, and what failed (first message per reason)."""

    events: Counter[str] = field(default_factory=Counter)
    dialects: dict[str, set[str]] = field(default_factory=dict)
    acked: int = 0
    core: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def fail(self, reason: str) -> None:
        self.failed += 1
        if not self.reasons[reason]:
            print(f"publish failed: {reason}", file=sys.stderr, flush=True)
        self.reasons[reason] += 1

    def summary(self, seconds: float, url: str) -> str:
        order = "RTNCULB"
        kinds = ", ".join(f"{kind} {n} [{' '.join(sorted(self.dialects[kind], key=order.index))}]"
                          for kind, n in self.events.items())
        return (f"published {sum(self.events.values())} events as {self.acked + self.core} payloads in "
                f"{seconds:.1f}s to {redact_url(url)} ({self.acked} JetStream-acked, {self.core} core): "
                f"{kinds or 'none'}; {self.failed} failed")


def _validate(pub: Publication, data: bytes) -> str | None:
    """Why the bridge would reject this payload (None: it becomes a job)."""
    from events import EventRejected, parse_event

    try:
        parse_event(pub.subject, data)
    except EventRejected as exc:
        return f"{pub.kind} ({pub.dialect}) on {pub.subject} is rejected by the event contract: {exc}"
    return None


class Publisher:
    """Publishes each payload on JetStream or core NATS, as the stream subjects say."""

    def __init__(self, nc: Any, stream_subjects: list[str], tally: Tally) -> None:
        self.nc, self.js, self.tally = nc, nc.jetstream(), tally
        self._stream_subjects = stream_subjects

    def _durable(self, subject: str) -> bool:
        """A subject a configured stream captures goes to JetStream, the rest to core NATS."""
        return any(matches(pattern, subject) for pattern in self._stream_subjects)

    async def publish(self, pubs: list[Publication]) -> None:
        """Publish one event's copies; the event counts once when any copy went out."""
        sent = [pub for pub in pubs if await self._one(pub)]
        if sent:
            self.tally.events[sent[0].kind] += 1
        for pub in sent:
            self.tally.dialects.setdefault(pub.kind, set()).add(pub.dialect)

    async def _one(self, pub: Publication) -> bool:
        data = pub.data()
        rejected = _validate(pub, data)
        if rejected:
            self.tally.fail(rejected)
            return False
        try:
            if self._durable(pub.subject):
                await self.js.publish(pub.subject, data, timeout=5, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                self.tally.acked += 1
            else:
                await self.nc.publish(pub.subject, data)
                self.tally.core += 1
        except Exception as exc:  # every failure is counted and reported, never fatal
            self.tally.fail(f"{pub.subject}: {type(exc).__name__}: {exc}".rstrip(": "))
            return False
        return True


async def _connect(loaded: Loaded, url: str) -> Any:
    import nats

    from runtime import connect_options

    async def quiet(_exc: Exception) -> None:
        return None  # failures surface as exceptions of the calls that hit them

    options = connect_options(loaded.settings.nats, name_suffix="-publish")
    # A demo run fails fast on a server it cannot reach, unlike the services, which never give up.
    options.update(servers=[u.strip() for u in url.split(",") if u.strip()], allow_reconnect=False,
                   max_reconnect_attempts=1, connect_timeout=min(5.0, loaded.settings.nats.connect_timeout),
                   error_cb=quiet)
    async with asyncio.timeout(15):
        return await nats.connect(**options)


async def _publish(loaded: Loaded, args: argparse.Namespace, targets: Targets, tally: Tally) -> float:
    """Publish at ``--rate`` for ``--duration`` / ``--count``; returns the seconds it took."""
    from nats.js.errors import NotFoundError

    nc = await _connect(loaded, targets.nats_url)
    try:
        subjects = [s for stream in loaded.settings.jetstream.streams for s in stream.subjects]
        try:
            await nc.jetstream().find_stream_name_by_subject(PROBE_SUBJECT)
        except NotFoundError:
            raise UsageError(f"no JetStream stream captures {PROBE_SUBJECT} on {redact_url(targets.nats_url)}: "
                             "the bridge creates it; start it (or `fechatter-notify dev`) first") from None
        publisher = Publisher(nc, subjects, tally)
        duration = args.duration if args.duration is not None else (None if args.count else 10.0)
        started = time.monotonic()
        for index, pubs in enumerate(ChatScript(args.chat, args.members).actions()):
            due = started + index / args.rate
            if (args.count is not None and index >= args.count) or (duration is not None and due - started >= duration):
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # pacing to --rate
            await publisher.publish(pubs)
        await nc.flush(timeout=5)
        return time.monotonic() - started
    finally:
        await nc.close()


# --------------------------------------------------------------------------- watching


def describe(frame: dict[str, Any]) -> str:
    """``type chat=… id=…`` of one notification, the fields that identify it."""
    parts = [str(frame.get("type"))]
    for key in ("chat_id", "id", "message_id", "message_ids", "user_id", "status"):
        if key in frame and frame[key] is not None:
            parts.append(f"{'chat' if key == 'chat_id' else key}={frame[key]}")
    return " ".join(parts)


class Watcher:
    """Reads one user's SSE stream and prints each frame as it arrives."""

    def __init__(self, user: int) -> None:
        self.user = user
        self.frames: Counter[str] = Counter()
        self.confirmed = asyncio.Event()

    async def run(self, gateway_url: str, token: str) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(f"{gateway_url}/events", params={"access_token": token}) as resp:
            if resp.status != 200:
                raise UsageError(f"the gateway at {gateway_url} answered {resp.status} for user {self.user}'s "
                                 f"stream: {(await resp.text())[:200]}")
            async for entry, frame in read_frames(resp.content):
                self._frame(frame, entry)

    def _frame(self, frame: dict[str, Any], entry: str | None) -> None:
        if frame.get("type") == "connection_confirmed":
            print(f"watching user {self.user}'s stream (connection_confirmed)", flush=True)
            self.confirmed.set()
            return
        self.frames[str(frame.get("type"))] += 1
        print(f"  user {self.user} <- {describe(frame)}" + (f"  [{entry}]" if entry else ""), flush=True)

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.frames.items())
        return f"watch: user {self.user} received {sum(self.frames.values())} frames: {kinds or 'none'}"


async def _main(loaded: Loaded, args: argparse.Namespace, targets: Targets, tally: Tally) -> Watcher | None:
    if targets.gateway_url is None or targets.token is None or args.watch is None:
        print(tally.summary(await _publish(loaded, args, targets, tally), targets.nats_url), flush=True)
        return None
    watcher = Watcher(args.watch)
    task = asyncio.create_task(watcher.run(targets.gateway_url, targets.token))
    try:
        waiter = asyncio.create_task(watcher.confirmed.wait())
        await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises what ended the stream
            raise UsageError(f"the gateway at {targets.gateway_url} closed user {args.watch}'s stream at once")
        if not watcher.confirmed.is_set():
            raise UsageError(f"no connection_confirmed from the gateway at {targets.gateway_url} within 10s")
        print(tally.summary(await _publish(loaded, args, targets, tally), targets.nats_url), flush=True)
        await asyncio.wait({task}, timeout=args.linger)  # frames still on their way
        print(watcher.summary(), flush=True)
        return watcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """Publish (and watch); 0 when everything was published and, with --watch, frames arrived."""
    try:
        targets = resolve_targets(loaded, args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RET_CONFIG
    try:
        print(f"publishing chat {args.chat} (members {','.join(map(str, args.members))}) to "
              f"{redact_url(targets.nats_url)} ({targets.nats_reason})", flush=True)
        tally = Tally()
        watcher = asyncio.run(_main(loaded, args, targets, tally))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RET_CONFIG
    except (OSError, TimeoutError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return RET_RUNTIME
    except Exception as exc:  # nats-py raises its own errors for a server it cannot reach
        if type(exc).__module__.startswith("nats"):
            print(f"error: cannot reach NATS at {redact_url(targets.nats_url)}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return RET_RUNTIME
        raise
    if tally.failed or (watcher is not None and not watcher.frames):
        return RET_RUNTIME
    return RET_OK
