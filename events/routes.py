"""The routing table: which decoder reads which NATS subject.

Read it top to bottom: the first pattern that matches a subject wins
(``*`` is one token, ``>`` the rest). ``dialects`` lists the letters of the
shapes the decoder accepts there, in the order it checks them; the job a
payload becomes is decided by the payload (its variant, ``event_type`` or
``kind``) except for membership subjects, whose payload does not say
whether the member joined or left. Sources: Fechatter's server at commit 60eb80b, summarised
in docs/event-contract.md#subjects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from events.decoders import (
    Decoder,
    broadcast,
    core_duplicate,
    core_joined,
    core_left,
    core_message,
    disguised_read_receipt,
    flat_or_core_message,
    legacy_duplicate,
    legacy_joined,
    legacy_left,
    legacy_message,
    never_constructed,
    not_for_notify,
    notify_flat,
    realtime,
    unified_joined,
    unified_left,
    unified_message,
)
from events.subjects import SubjectIndex

__all__ = ["ROUTES", "Route", "Status", "route_for"]


class Status(StrEnum):
    """Whether anything in Fechatter publishes on a route's subject today."""

    #: An HTTP route registered in Fechatter reaches the publisher.
    LIVE = "live"
    #: The publisher exists but no HTTP route reaches it at commit 60eb80b.
    UNREACHED = "unreached"
    #: Dead module or notify-only contract, kept for backward compatibility.
    LEGACY = "legacy"
    #: Owned by another consumer, or never constructed: always rejected.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Route:
    """One row of :data:`ROUTES`: subject pattern, accepted dialects, status, decoder."""

    pattern: str
    #: Dialect letters (:class:`~events.jobs.Dialect`) the decoder accepts, in check order.
    dialects: str
    status: Status
    decode: Decoder


LIVE, UNREACHED, LEGACY, REJECTED = Status

# fmt: off
#: Every subject the bridge may see; the first matching pattern wins, so keep
#: specific patterns above the ``>`` catch-alls that would shadow them.
ROUTES: Final[tuple[Route, ...]] = (
    # Live: one POST /chat/{id}/messages publishes the first four.
    Route("fechatter.realtime.chat.*",                  "RTN", LIVE,      realtime),
    Route("fechatter.message.new",                      "N",   LIVE,      notify_flat),
    Route("fechatter.message.created",                  "C",   LIVE,      core_message),
    Route("fechatter.messages.message.created.v1",      "U",   LIVE,      unified_message),
    Route("fechatter.realtime.chat.*.read",             "RTN", LIVE,      realtime),
    Route("fechatter.realtime.chat.*.typing",           "RTN", LIVE,      realtime),
    Route("fechatter.realtime.user.*.presence",         "RTN", LIVE,      realtime),
    # A publisher exists, but no HTTP route reaches it.
    Route("fechatter.realtime.chat.*.unread",           "RTN", UNREACHED, realtime),
    Route("fechatter.realtime.chat.*.deleted",          "RTN", UNREACHED, realtime),
    Route("fechatter.realtime.read_receipts",           "N",   UNREACHED, notify_flat),
    Route("fechatter.realtime.message.read_receipt.v1", "U",   UNREACHED, disguised_read_receipt),
    Route("fechatter.message.edited",                   "N",   UNREACHED, notify_flat),
    Route("fechatter.message.updated",                  "C",   UNREACHED, core_message),
    Route("fechatter.message.deleted",                  "NC",  UNREACHED, flat_or_core_message),
    Route("fechatter.messages.message.edited.v1",       "U",   UNREACHED, unified_message),
    Route("fechatter.messages.message.deleted.v1",      "U",   UNREACHED, unified_message),
    Route("fechatter.chat.member_joined",               "N",   UNREACHED, notify_flat),
    Route("fechatter.chat.member_left",                 "N",   UNREACHED, notify_flat),
    Route("fechatter.chat.joined",                      "C",   UNREACHED, core_joined),
    Route("fechatter.chat.left",                        "C",   UNREACHED, core_left),
    Route("fechatter.chats.member.joined.v1",           "U",   UNREACHED, unified_joined),
    Route("fechatter.chats.member.left.v1",             "U",   UNREACHED, unified_left),
    Route("fechatter.message.duplicate",                "C",   UNREACHED, core_duplicate),
    # Legacy and notify-only contracts, and the broadcast subject of notify.yml.
    Route("fechatter.messages.created",                 "L",   LEGACY,    legacy_message),
    Route("fechatter.chats.member.joined",              "L",   LEGACY,    legacy_joined),
    Route("fechatter.chats.member.left",                "L",   LEGACY,    legacy_left),
    Route("fechatter.messages.duplicate",               "L",   LEGACY,    legacy_duplicate),
    Route("fechatter.user.>",                           "N",   LEGACY,    notify_flat),
    Route("fechatter.realtime.>",                       "RTN", LEGACY,    realtime),
    Route("fechatter.broadcast",                        "B",   LEGACY,    broadcast),
    # Never jobs: other consumers' subjects, and a type Fechatter never builds.
    Route("fechatter.search.>",                         "",    REJECTED,  not_for_notify),
    Route("fechatter.analytics.>",                      "",    REJECTED,  not_for_notify),
    Route("fechatter.notification.events",              "",    REJECTED,  not_for_notify),
    Route("FECHATTER_DOMAIN_EVENTS.>",                  "",    REJECTED,  never_constructed),
)
# fmt: on

_INDEX: Final[SubjectIndex[Route]] = SubjectIndex((r.pattern, r) for r in ROUTES)


#: Distinct subjects remembered by :func:`route_for`; chat and user ids make
#: subjects many but skewed, and a hit costs ~0.1 us against ~3 us for a walk.
ROUTE_CACHE_SIZE: Final = 8192


@functools.lru_cache(maxsize=ROUTE_CACHE_SIZE)
def route_for(subject: str) -> Route | None:
    """Return the first route whose pattern matches ``subject``, or None."""
    return _INDEX.lookup(subject)
