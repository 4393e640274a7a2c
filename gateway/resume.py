"""Where a stream resumes, and the frames that end a stream or ask the client to resync.

A browser resends the same ``Last-Event-ID`` on every reconnect and cannot change it, so no
value ever earns an error status (a 4xx would repeat forever): anything the gateway cannot
replay from exactly is answered with ``200``, one ``resync_required`` frame, and the live
stream. Whatever the client then refetches, nothing after that frame is missed.

``resync_required`` carries ``id:`` = the inbox's newest entry: the browser then resumes from
there on its next reconnect instead of sending the id that could not be replayed again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Final

from gateway.frames import ZERO_ID, StreamId, data_frame, json_frame, parse_stream_id, retry_line
from gateway.replay import InboxBounds

#: The longest Last-Event-ID that can be an id (``<2^64-1>-<2^64-1>``); longer is refused unread.
MAX_LAST_EVENT_ID_LENGTH: Final = 41

#: Why a stream asks its client to resync (the frame's ``reason``).
INVALID_ID: Final = "invalid_id"  # not an inbox entry id at all
UNKNOWN_ID: Final = "unknown_id"  # beyond the inbox's newest entry: another history
TRIMMED: Final = "trimmed"  # entries after it were trimmed (or the inbox expired)
TOO_FAR_BEHIND: Final = "too_far_behind"  # more than gateway.replay_max_entries to replay

#: ``retry:`` range (ms) of a stream closed by a draining gateway: jittered so that its
#: clients do not reconnect to the surviving gateways all in the same instant.
DRAIN_RETRY_MS: Final = (500, 3000)


@dataclass(frozen=True, slots=True)
class ResumeFrom:
    """A request's resume point: ``after`` (None: start live) and whether the client sent an
    id that is not one (``invalid``)."""

    after: StreamId | None
    invalid: bool


def resume_point(raw: str | None) -> ResumeFrom:
    """Validate a ``Last-Event-ID`` (header or ``lastEventId`` query): two unsigned 64-bit parts.

    Absent or empty means "start live" (the SSE spec sends none until an ``id:`` was seen).
    """
    if not raw or not raw.strip():
        return ResumeFrom(None, invalid=False)
    if len(raw) > MAX_LAST_EVENT_ID_LENGTH:
        return ResumeFrom(None, invalid=True)
    try:
        return ResumeFrom(parse_stream_id(raw), invalid=False)
    except ValueError:
        return ResumeFrom(None, invalid=True)


def resync_frame(reason: str, bounds: InboxBounds) -> bytes:
    """``{"type":"resync_required","reason":…,"earliest":…}`` with ``id:`` = the newest entry.

    ``earliest`` (like Mercure's) is the oldest entry the inbox still holds, or null: history
    before it is gone for good. The client refetches what it shows from Fechatter's API.
    """
    payload = {
        "type": "resync_required",
        "reason": reason,
        "earliest": str(bounds.oldest) if bounds.oldest is not None else None,
    }
    data = json.dumps(payload, separators=(",", ":")).encode()
    newest = str(bounds.newest).encode() if bounds.newest > ZERO_ID else None
    return data_frame(data, newest)


def final_frame(reason: str, rng: random.Random | None = None) -> bytes | None:
    """The last bytes of a stream the server ends, by close reason (None: nothing to say).

    - ``token_expired``: ``{"type":"token_expired"}``; reconnecting with the same token is
      refused with 401, so the client must get a fresh token first.
    - ``server_draining``: a jittered ``retry:`` and ``{"type":"reconnect","retry_ms":…}``:
      reconnect (to another gateway) with Last-Event-ID, nothing is lost.
    """
    if reason == "token_expired":
        return json_frame({"type": "token_expired"})
    if reason == "server_draining":
        retry_ms = (rng or random).randint(*DRAIN_RETRY_MS)
        return retry_line(retry_ms) + json_frame({"type": "reconnect", "retry_ms": retry_ms})
    return None
