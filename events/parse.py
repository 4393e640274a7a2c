"""The bridge's entry point: one NATS message in, one job out (or a dead letter)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from events.errors import EventRejected, RejectCode
from events.jobs import DEFAULT_PRESENCE_TTL_S, DEFAULT_TYPING_TTL_S, Job
from events.received import Received
from events.routes import route_for

__all__ = ["EventParser", "parse_event"]


def parse_event(
    subject: str,
    data: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    stream: str | None = None,
    stream_seq: int | None = None,
    delivered: int | None = None,
    received_at: datetime | None = None,
    typing_ttl_s: float = DEFAULT_TYPING_TTL_S,
    presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S,
) -> Job:
    """Turn one NATS message into the job it asks for.

    The subject picks a decoder from :data:`events.routes.ROUTES`; the
    payload is decoded once and normalised (int ids, aware datetimes).

    Parameters:
      subject(str): The NATS subject the message arrived on.
      data(bytes): The raw payload.
      headers(Mapping[str, str] | None): NATS headers; ``Nats-Msg-Id`` becomes
        ``origin.event_id`` when the payload has no event id of its own.
      stream(str | None): JetStream stream name, None for core NATS.
      stream_seq(int | None): JetStream stream sequence.
      delivered(int | None): JetStream delivery count.
      received_at(datetime | None): Timezone-aware arrival time; now (UTC) if None.
      typing_ttl_s(float): Lifetime of typing jobs after ``received_at``, in seconds.
      presence_ttl_s(float): Lifetime of presence jobs after ``received_at``, in seconds.

    Returns:
      The job, with ``origin`` describing this delivery.

    Raises:
      EventRejected: the message cannot become a job; ``code`` says why and
        ``reason`` names the subject, field or value. Nothing else is raised
        for any ``data``.
      ValueError: ``received_at`` is naive (a caller bug, not a bad message).
    """
    route = route_for(subject)
    if route is None:
        raise EventRejected(f"no route for subject {subject!r}", RejectCode.NO_ROUTE)
    _require_utf8(subject, data)
    rx = Received(
        subject,
        headers,
        received_at=datetime.now(UTC) if received_at is None else received_at,
        typing_ttl_s=typing_ttl_s,
        presence_ttl_s=presence_ttl_s,
        stream=stream,
        stream_seq=stream_seq,
        delivered=delivered,
    )
    return route.decode(data, rx)


class EventParser:
    """:func:`parse_event` for the events of one batch, which share an arrival time and TTLs.

    The bridge parses every event of a fetched batch with one of these: the facts each decoder
    reads (:class:`~events.received.Received`) live in one object whose per-event fields are
    set for each event, instead of a new object and a keyword call per event. Decoders read
    ``rx`` only while they run (the job's :class:`~events.jobs.Origin` copies what it keeps),
    so reusing it is safe; :meth:`parse` is not reentrant.

    Parameters:
      received_at(datetime): Timezone-aware arrival time of the batch.
      typing_ttl_s(float), presence_ttl_s(float): As in :func:`parse_event`.

    Raises:
      ValueError: ``received_at`` is naive.
    """

    __slots__ = ("_presence_ttl_s", "_received_at", "_rx", "_typing_ttl_s")

    def __init__(self, received_at: datetime, typing_ttl_s: float = DEFAULT_TYPING_TTL_S,
                 presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S) -> None:
        self._typing_ttl_s = typing_ttl_s
        self._presence_ttl_s = presence_ttl_s
        self._received_at = received_at
        self._rx = self._received(received_at)

    def _received(self, received_at: datetime) -> Received:
        return Received("", None, received_at=received_at, typing_ttl_s=self._typing_ttl_s,
                        presence_ttl_s=self._presence_ttl_s)

    def parse(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        stream: str | None,
        stream_seq: int | None,
        delivered: int | None,
        received_at: datetime | None = None,
    ) -> Job:
        """Exactly :func:`parse_event` (same job, same rejections) for one event of the batch.

        ``received_at`` replaces the batch's arrival time for this event (events held through a
        Redis outage keep the time they arrived); None is the batch's.
        """
        route = route_for(subject)
        if route is None:
            raise EventRejected(f"no route for subject {subject!r}", RejectCode.NO_ROUTE)
        if not data.isascii():
            _require_utf8(subject, data)
        rx = self._rx
        at = self._received_at if received_at is None else received_at
        if at is not rx.received_at:
            rx = self._rx = self._received(at)
        rx.subject = subject
        rx.headers = headers
        rx.stream = stream
        rx.stream_seq = stream_seq
        rx.delivered = delivered
        return route.decode(data, rx)


def _require_utf8(subject: str, data: bytes) -> None:
    """JSON text is UTF-8 (RFC 8259, section 8.1); refuse any other bytes before decoding.

    msgspec validates UTF-8 only in the strings it reads: bad bytes in a key or value it skips
    were accepted, and the realtime decoder's second pass over the keys raised its DecodeError
    out of this function (which the bridge's batch does not catch). ``isascii`` is a C scan
    without a copy, so only payloads with non-ASCII bytes pay for the full check.
    """
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(
            f"payload on {subject!r} is not JSON: byte {exc.start} is not UTF-8 ({exc.reason})", RejectCode.NOT_JSON
        ) from None
