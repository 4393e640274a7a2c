"""The facts about one NATS delivery that are not in its payload."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from events.jobs import Dialect, Origin

__all__ = ["Received"]

#: Header set by JetStream publishers for de-duplication; used as the event id
#: when the payload has none of its own.
MSG_ID_HEADER = "Nats-Msg-Id"


class Received:
    """One delivery's subject, headers, JetStream position and arrival time.

    Decoders read it to stamp each job's :class:`~events.jobs.Origin` and to
    compute ``expires_at`` for ephemeral jobs.

    Parameters:
      subject(str): The NATS subject the message arrived on.
      headers(Mapping[str, str] | None): NATS headers, if any.
      received_at(datetime): Timezone-aware arrival time.
      typing_ttl_s(float): Lifetime of typing jobs, in seconds.
      presence_ttl_s(float): Lifetime of presence jobs, in seconds.
      stream, stream_seq, delivered: JetStream metadata; None on core NATS.
    """

    __slots__ = (
        "delivered",
        "headers",
        "presence_ttl_s",
        "received_at",
        "stream",
        "stream_seq",
        "subject",
        "typing_ttl_s",
    )

    def __init__(
        self,
        subject: str,
        headers: Mapping[str, str] | None,
        *,
        received_at: datetime,
        typing_ttl_s: float,
        presence_ttl_s: float,
        stream: str | None = None,
        stream_seq: int | None = None,
        delivered: int | None = None,
    ) -> None:
        if received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        self.subject = subject
        self.headers = headers
        self.received_at = received_at
        self.typing_ttl_s = typing_ttl_s
        self.presence_ttl_s = presence_ttl_s
        self.stream = stream
        self.stream_seq = stream_seq
        self.delivered = delivered

    @property
    def typing_expires_at(self) -> datetime:
        """When a typing job built from this delivery goes stale."""
        return self.received_at + timedelta(seconds=self.typing_ttl_s)

    @property
    def presence_expires_at(self) -> datetime:
        """When a presence job built from this delivery goes stale."""
        return self.received_at + timedelta(seconds=self.presence_ttl_s)

    def origin(self, dialect: Dialect, event_id: str | None = None) -> Origin:
        """Return the job origin for this delivery, decoded as ``dialect``.

        ``event_id`` is the payload's own id; without one, the ``Nats-Msg-Id``
        header stands in.
        """
        if event_id is None and self.headers is not None:
            event_id = self.headers.get(MSG_ID_HEADER)
        return Origin(
            subject=self.subject,
            dialect=dialect,
            stream=self.stream,
            stream_seq=self.stream_seq,
            delivered=self.delivered,
            event_id=event_id,
            received_at=self.received_at,
        )
