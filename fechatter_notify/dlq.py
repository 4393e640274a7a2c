"""``fechatter-notify dlq``: both dead-letter stores in one listing, and replay or purge of a selection.

The bridge's dead letters (:mod:`bridge.dead_letter_store`) and dramatiq's dead-letter queues
(:mod:`workers.dead_letter_queue`) each know their own store; this module only selects their
records with the command's filters, formats them and prints. Payloads are chat text: ``show``
hides their strings unless ``--show-payload``, and never prints a value that looks like a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.exceptions import RedisError

from bridge import BridgeError, DeadLetter, DeadLetterStore, ReplayOutcome
from events import matches, validate_pattern
from runtime import RET_CONFIG, RET_OK, RET_RUNTIME, describe_redis
from settings import DurationError, Loaded, Settings, parse_duration, redact_urls_in
from workers import DeadLetterQueues, FailedJob, RequeueOutcome

__all__ = ["RET_LEFT", "RET_OK", "RET_USAGE", "add_arguments", "run"]

#: Something selected stays a dead letter (rejected again, not replayable, not found, purge declined).
RET_LEFT: Final = RET_RUNTIME
#: A filter that does not parse, or Redis unreachable (the code of a command line with errors).
RET_USAGE: Final = RET_CONFIG

BRIDGE: Final = "bridge"
DRAMATIQ: Final = "dramatiq"
#: Longest reason on a ``list`` line (``show`` prints it whole).
LIST_REASON: Final = 160


@dataclass(frozen=True, slots=True)
class Row:
    """One record of either store, as the command shows and selects it."""

    source: str
    id: str
    at: datetime
    where: str
    subject: str | None
    job: str | None
    code: str
    reason: str
    size: int
    replayable: bool
    record: DeadLetter | FailedJob


# ------------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dlq`` subcommands and their options."""
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    listing = sub.add_parser("list", help="both stores, newest first, one line each")
    _filters(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text",
                         help="json: one object per line (source, id, at, where, subject, job, code, reason, size)")
    show = sub.add_parser("show", help="one record whole, payload pretty-printed")
    show.add_argument("id", help="the id `list` printed")
    show.add_argument("--config", dest="sub_config", metavar="PATH")
    show.add_argument("--show-payload", action="store_true", help="print the payload's text (chat content)")
    replay = sub.add_parser("replay", help="send the selected records through the normal path again")
    _filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    purge = sub.add_parser("purge", help="delete the selected records")
    _filters(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="sub_config", metavar="PATH")
    parser.add_argument("--source", choices=(BRIDGE, DRAMATIQ), help="only this store")
    parser.add_argument("--reason", metavar="CODE", help="reason code, e.g. not_json, payload_too_large, "
                        "max_deliveries, InvalidJob")
    parser.add_argument("--subject", metavar="PATTERN", help="NATS subject pattern (* and > wildcards)")
    parser.add_argument("--job-type", metavar="T", help="job kind or actor (NewMessage, new_message): "
                        "dramatiq jobs only")
    parser.add_argument("--since", metavar="DURATION", help="only records younger than this, e.g. 1h, 30m")
    parser.add_argument("--id", dest="ids", action="append", metavar="ID", help="only this record (repeatable)")


# ------------------------------------------------------------------------------------- selection


def selector(args: argparse.Namespace, now: datetime) -> Callable[[Row], bool]:
    """The filters of ``args`` as one predicate.

    Raises:
      ValueError: a pattern or duration that does not parse (the message says which).
    """
    checks: list[Callable[[Row], bool]] = []
    if getattr(args, "source", None):
        checks.append(lambda row: row.source == args.source)
    if getattr(args, "reason", None):
        checks.append(lambda row: row.code.lower() == args.reason.lower())
    if getattr(args, "subject", None):
        try:
            validate_pattern(args.subject)
        except ValueError as exc:
            raise ValueError(f"--subject: {exc}") from None
        checks.append(lambda row: row.subject is not None and matches(args.subject, row.subject))
    if getattr(args, "job_type", None):
        wanted = args.job_type.lower()
        checks.append(lambda row: isinstance(row.record, FailedJob)
                      and wanted in {(row.job or "").lower(), row.record.actor.lower()})
    if getattr(args, "since", None):
        try:
            since = now - timedelta(seconds=parse_duration(args.since))
        except DurationError as exc:
            raise ValueError(f"--since: {exc}") from None
        checks.append(lambda row: row.at >= since)
    if getattr(args, "ids", None):
        checks.append(lambda row: row.id in args.ids)
    return lambda row: all(check(row) for check in checks)


def bridge_row(letter: DeadLetter) -> Row:
    where = f"{BRIDGE} {letter.stream}#{letter.seq}" if letter.stream else f"{BRIDGE} {letter.consumer or 'core'}"
    return Row(BRIDGE, letter.id, letter.at, where, letter.subject or None, None, letter.code, letter.reason,
               letter.size, letter.not_replayable is None, letter)


def dramatiq_row(job: FailedJob) -> Row:
    return Row(DRAMATIQ, job.id, job.at, f"{DRAMATIQ} {job.queue}", job.subject, job.job or job.actor, job.code,
               job.reason, job.size, True, job)


# ------------------------------------------------------------------------------------- formatting


def list_line(row: Row) -> str:
    """One ``list`` line: when, where from, subject or job, code, reason, size."""
    reason = " ".join(row.reason.split())
    if len(reason) > LIST_REASON:
        reason = reason[: LIST_REASON - 1] + "…"
    what = row.subject or row.job or "-"
    if row.subject and row.job:
        what = f"{row.subject} ({row.job})"
    return f"{_when(row.at)}  {row.id}  {row.where}  {what}  {row.code}  {reason}  {_size(row.size)}"


def json_line(row: Row) -> str:
    """One ``list --format json`` line."""
    return json.dumps({"source": row.source, "id": row.id, "at": _when(row.at), "where": row.where,
                       "subject": row.subject, "job": row.job, "code": row.code, "reason": row.reason,
                       "size": row.size, "replayable": row.replayable}, ensure_ascii=False)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _size(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"


#: Values of these keys say what an event is, not what anyone wrote: shown without --show-payload.
_STRUCTURAL: Final = frozenset({"kind", "version", "event_type", "type", "status", "dialect", "subject", "stream",
                                "queue_name", "actor_name", "message_id", "redis_message_id", "event_id", "id",
                                "idempotency_key", "timestamp", "last_seen", "consumer", "sentry-trace"})
#: Keys whose values are never printed, even with --show-payload.
_SECRET: Final = re.compile(r"token|secret|passw|authori[sz]ation|cookie|api.?key|jwt|baggage|credential|dsn",
                            re.IGNORECASE)
_HIDDEN: Final = "<hidden: {} chars; --show-payload shows it>"


def redact_value(value: Any, key: str = "", *, show: bool = False) -> Any:
    """``value`` with secrets masked always and text hidden unless ``show`` (ids, kinds and times stay)."""
    if isinstance(value, dict):
        return {k: redact_value(v, str(k), show=show) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(item, key, show=show) for item in value]
    if key and _SECRET.search(key):
        return "***"
    if isinstance(value, str) and not show and not _structural(key):
        return _HIDDEN.format(len(value))
    return value


def _structural(key: str) -> bool:
    return key in _STRUCTURAL or key.endswith(("_at", "_id"))


def show_lines(row: Row, *, show_payload: bool) -> Iterator[str]:
    """The whole record, payload pretty-printed (redacted unless ``show_payload``)."""
    yield from (f"{name}: {value}" for name, value in (
        ("source", row.source), ("id", row.id), ("at", _when(row.at)), ("where", row.where),
        ("subject", row.subject or "-"), ("job", row.job or "-"), ("code", row.code), ("reason", row.reason),
        ("size", f"{row.size} bytes"), ("replayable", "yes" if row.replayable else "no"),
    ))
    if isinstance(row.record, DeadLetter):
        yield from _bridge_details(row.record, show_payload)
    else:
        yield from _dramatiq_details(row.record, show_payload)


def _bridge_details(letter: DeadLetter, show_payload: bool) -> Iterator[str]:
    yield f"stream: {letter.stream or '-'}  seq: {letter.seq or '-'}  stored: {_stored(letter.stored_ns)}  " \
          f"delivered: {letter.delivered or '-'}  consumer: {letter.consumer}"
    if letter.not_replayable:
        yield f"not replayable: {letter.not_replayable}"
    # Headers are the publisher's metadata (Nats-Msg-Id, trace ids), not chat text: only secrets are masked.
    yield "headers: " + json.dumps(redact_value(letter.headers, show=True), ensure_ascii=False)
    yield "payload:"
    yield from _payload(letter.data, len(letter.data) < letter.size, show_payload)


def _stored(stored_ns: int | None) -> str:
    """When the stream stored the event (part of its identity: a replay keeps it), to the nanosecond."""
    if stored_ns is None:
        return "-"
    seconds, nanos = divmod(stored_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _payload(data: bytes, prefix: bool, show: bool) -> Iterator[str]:
    note = f" (the first {len(data)} bytes only)" if prefix else ""
    try:
        decoded = json.loads(data)
    except ValueError:
        if show:
            yield data.decode(errors="backslashreplace") + note
        else:
            yield f"<{len(data)} bytes, not JSON{note}; --show-payload shows them>"
        return
    yield from json.dumps(redact_value(decoded, show=show), indent=2, ensure_ascii=False).splitlines()
    if note:
        yield note.strip()


def _dramatiq_details(job: FailedJob, show_payload: bool) -> Iterator[str]:
    yield f"queue: {job.queue}  actor: {job.actor}  retries: {job.retries}"
    yield "message:"
    yield from json.dumps(redact_value(job.message, show=show_payload), indent=2, ensure_ascii=False).splitlines()


# ------------------------------------------------------------------------------------- commands


@dataclass
class Summary:
    """What a replay did, in the order it is printed."""

    replayed: int = 0
    already: int = 0
    rejected: list[str] = field(default_factory=list)
    not_replayable: list[str] = field(default_factory=list)

    def lines(self, dry_run: bool) -> Iterator[str]:
        verb = "would replay" if dry_run else "replayed"
        yield (f"{verb} {self.replayed}, rejected again {len(self.rejected)}, already delivered {self.already}, "
               f"not replayable {len(self.not_replayable)}")
        yield from (f"  rejected again: {line}" for line in self.rejected)
        yield from (f"  not replayable: {line}" for line in self.not_replayable)

    @property
    def left(self) -> bool:
        return bool(self.rejected or self.not_replayable)


async def _replay(rows: Sequence[Row], stores: Stores, dry_run: bool) -> Summary:
    summary = Summary()
    with _progress(len(rows), "replaying") as advance:
        for row in rows:
            await _replay_one(row, stores, dry_run, summary)
            advance()
    return summary


async def _replay_one(row: Row, stores: Stores, dry_run: bool, summary: Summary) -> None:
    if isinstance(row.record, FailedJob):
        (done,) = stores.dramatiq.requeue([row.record], dry_run=dry_run)
        if done.outcome is RequeueOutcome.REQUEUED:
            summary.replayed += 1
        else:
            summary.already += 1
        return
    result = await stores.bridge.replay(row.record, dry_run=dry_run)
    if result.outcome is ReplayOutcome.REPLAYED:
        summary.replayed += 1
    elif result.outcome is ReplayOutcome.ALREADY_DELIVERED:
        summary.already += 1
    elif result.outcome is ReplayOutcome.REJECTED:
        summary.rejected.append(f"{row.id} {row.subject}: {result.code}: {result.reason}")
    else:
        summary.not_replayable.append(f"{row.id} {row.subject or '-'}: {result.reason}")


class _progress:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (logs, pipes, tests)."""

    def __init__(self, total: int, what: str) -> None:
        self._total, self._what = total, what
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not sys.stderr.isatty() or self._total < 1:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task(self._what, total=self._total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@dataclass(frozen=True, slots=True)
class Stores:
    """Both stores of one deployment."""

    bridge: DeadLetterStore
    dramatiq: DeadLetterQueues

    async def rows(self) -> list[Row]:
        """Every record of both, newest first."""
        rows = [*map(bridge_row, await self.bridge.read()), *map(dramatiq_row, self.dramatiq.read())]
        return sorted(rows, key=lambda row: row.at, reverse=True)

    async def purge(self, rows: Sequence[Row]) -> int:
        """Delete ``rows`` from their stores; returns how many were still there."""
        letters = [row.id for row in rows if isinstance(row.record, DeadLetter)]
        jobs = [row.record for row in rows if isinstance(row.record, FailedJob)]
        return await self.bridge.purge(letters) + (self.dramatiq.purge(jobs) if jobs else 0)

    async def close(self) -> None:
        self.dramatiq.close()
        await self.bridge.close()


def _confirm(rows: Sequence[Row]) -> bool:
    bridge = sum(row.source == BRIDGE for row in rows)
    question = f"purge {len(rows)} dead letter(s) ({bridge} {BRIDGE}, {len(rows) - bridge} {DRAMATIQ})? [y/N] "
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


async def _command(settings: Settings, args: argparse.Namespace) -> int:
    stores = Stores(DeadLetterStore(settings), DeadLetterQueues(settings))
    try:
        rows = await stores.rows()
        if args.dlq_command == "show":
            return _show(rows, args)
        selected = selector(args, datetime.now(UTC))
        rows = [row for row in rows if selected(row)]
        if args.dlq_command == "list":
            for row in rows:
                print(json_line(row) if args.format == "json" else list_line(row))
            return RET_OK
        if not rows:
            print("no dead letters selected")
            return RET_OK
        if args.dlq_command == "replay":
            # Oldest first: a chat's events reach the queues in the order they happened.
            summary = await _replay(rows[::-1], stores, args.dry_run)
            for line in summary.lines(args.dry_run):
                print(line)
            return RET_LEFT if summary.left else RET_OK
        if not args.yes and not _confirm(rows):
            print("nothing purged")
            return RET_LEFT
        print(f"purged {await stores.purge(rows)}")
        return RET_OK
    finally:
        await stores.close()


def _show(rows: Sequence[Row], args: argparse.Namespace) -> int:
    found = [row for row in rows if row.id == args.id]
    if not found:
        print(f"no dead letter with id {args.id!r} (ids are in `fechatter-notify dlq list`)", file=sys.stderr)
        return RET_LEFT
    for line in show_lines(found[0], show_payload=args.show_payload):
        print(line)
    return RET_OK


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``dlq`` subcommand; exit codes :data:`RET_OK`, :data:`RET_LEFT`, :data:`RET_USAGE`."""
    settings = loaded.settings
    try:
        selector(args, datetime.now(UTC))  # a bad filter is refused before anything is read
    except ValueError as exc:
        print(f"fechatter-notify dlq: {exc}", file=sys.stderr)
        return RET_USAGE
    try:
        return asyncio.run(_command(settings, args))
    except (BridgeError, RedisError, OSError) as exc:  # the store's RedisUnavailable is a BridgeError
        where = describe_redis(settings.redis)
        print(f"fechatter-notify dlq: Redis at {where} did not answer: {type(exc).__name__}: "
              f"{redact_urls_in(str(exc))}", file=sys.stderr)
        return RET_USAGE
