"""Dead letters: what the bridge could not turn into a job, stored with everything needed to replay it.

Each one is an entry of the Redis stream ``{namespace}:{dead_letters.stream}`` (exact MAXLEN
``dead_letters.max_len``), written by the same script and round trip as the batch's jobs, so
it is idempotent too (a redelivered poison message is stored once). Fields:

=============  ==============================================================
``subject``    NATS subject
``headers``    JSON object of the NATS headers (``{}`` when none)
``data``       the raw payload bytes, unchanged; for ``payload_too_large`` only its first
               :data:`TOO_LARGE_PREFIX` bytes (enough to see what it was, without storing
               megabytes per poison message)
``size``       the payload's full length in bytes (``len(data) < size``: ``data`` is a prefix)
``stream``     JetStream stream (empty on core NATS)
``seq``        stream sequence (empty on core NATS)
``ts``         when the stream stored the message, in nanoseconds since the epoch (part of the
               event's identity, :func:`bridge.batch.event_identity`; empty on core NATS, when
               JetStream did not give the message, and in records written before it existed)
``delivered``  JetStream delivery count (empty on core NATS)
``consumer``   durable name, or ``core``
``code``       stable reason code (:class:`events.RejectCode` or ``max_deliveries``)
``reason``     text for an operator
``at``         when the bridge stored it (RFC 3339, UTC)
=============  ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Final

__all__ = ["MAX_DELIVERIES", "TOO_LARGE_PREFIX", "dead_letter_fields"]

#: The code of a dead letter recorded from a max-deliveries advisory.
MAX_DELIVERIES: Final = "max_deliveries"

#: Bytes of an oversized payload kept in its dead letter: the subject and reason say what
#: happened, and the start of the JSON shows which event it was (its variant, ids, sender).
TOO_LARGE_PREFIX: Final = 4096


def dead_letter_fields(
    subject: str,
    data: bytes,
    headers: Mapping[str, str] | None,
    *,
    consumer: str,
    code: str,
    reason: str,
    at: datetime,
    stream: str | None = None,
    stream_seq: int | None = None,
    delivered: int | None = None,
    size: int | None = None,
    stored_ns: int | None = None,
) -> list[str | bytes]:
    """The stream entry's alternating field names and values.

    ``size`` is the full payload's length when ``data`` is only its prefix; else ``len(data)``.
    ``stored_ns`` is the ``ts`` field: a replay rebuilds the event's identity from it.
    """
    return [
        "subject", subject,
        "headers", json.dumps(dict(headers) if headers else {}, separators=(",", ":")),
        "data", data,
        "size", str(len(data) if size is None else size),
        "stream", stream or "",
        "seq", "" if stream_seq is None else str(stream_seq),
        "ts", "" if stored_ns is None else str(stored_ns),
        "delivered", "" if delivered is None else str(delivered),
        "consumer", consumer,
        "code", code,
        "reason", reason,
        "at", at.isoformat(),
    ]  # fmt: skip
