"""The inbox auditor: what every user's inbox holds, against what each user should have got.

A chaos scenario knows, from its traffic (tests/chaos/traffic.py), which notifications each user
must receive exactly once. :func:`audit_inboxes` reads the inboxes the workers wrote
(``{ns}:inbox:{user}``, field ``n`` = the notification's JSON; events/inbox.py) and reports, per
user and in total:

- **lost**: expected, absent from the inbox;
- **duplicated**: present more than once (key -> how many times);
- **unexpected**: present, never expected (also every entry of a user nothing was expected for).

A notification is identified by its :data:`Key`, ``(type, chat_id, id)``: the identity the
workers deduplicate on (events.jobs.dedupe_key: one notification per user per chat and message,
whatever dialects and redeliveries arrive). Types without such an identity (typing, presence,
read receipts, membership, broadcasts) are not audited: :func:`notification_key` answers None and
the entry is only counted as ``ignored``.

Inbox capping: the workers trim each inbox to ``delivery.inbox_max_len`` entries (default 1000)
and ``delivery.inbox_max_age``. A trimmed entry would read as *lost* here, so every configuration
audited with this module must set ``inbox_max_len`` above the most notifications one user can
receive in the scenario (tests/chaos/harness.py writes 10,000,000).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from events.inbox import INBOX_FIELD, inbox_key

__all__ = [
    "DEFAULT_NAMESPACE",
    "AUDITED_TYPES",
    "Audit",
    "Key",
    "UserAudit",
    "audit_inboxes",
    "inbox_entries",
    "notification_key",
]

Key = tuple[str, int, int]

#: ``redis.namespace``'s default (settings/model.py).
DEFAULT_NAMESPACE = "fechatter-notify"
#: Notification types that carry a ``chat_id`` and a message ``id`` and are delivered once each.
AUDITED_TYPES = frozenset({"new_message", "message_edited", "message_deleted"})
#: Entries read per XRANGE call.
PAGE = 5000


def notification_key(notification: dict[str, Any]) -> Key | None:
    """``(type, chat_id, id)`` of an audited notification; None for the types the audit ignores.

    A notification of an audited type without integer ids is malformed: it raises ValueError, so
    the audit fails loudly instead of counting it as something it is not.
    """
    kind = notification.get("type")
    if kind not in AUDITED_TYPES:
        return None
    chat, ident = notification.get("chat_id"), notification.get("id")
    if type(chat) is not int or type(ident) is not int:
        raise ValueError(f"{kind} notification without integer chat_id and id: {notification!r}")
    return (str(kind), chat, ident)


@dataclass
class UserAudit:
    """One user's inbox against what was expected for that user."""

    user: int
    lost: list[Key]
    duplicated: dict[Key, int]
    unexpected: list[Key]
    #: Entries of types the audit does not identify (see :func:`notification_key`).
    ignored: int = 0
    #: Audited entries read from the inbox.
    received: int = 0

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def line(self, limit: int) -> str:
        """One line for an assertion message: counts and the first ``limit`` keys of each kind."""
        parts = [f"user {self.user}: received={self.received}"]
        if self.lost:
            parts.append(f"lost={len(self.lost)} {sorted(self.lost)[:limit]}")
        if self.duplicated:
            dups = sorted(self.duplicated.items())[:limit]
            parts.append(f"duplicated={len(self.duplicated)} {dups}")
        if self.unexpected:
            parts.append(f"unexpected={len(self.unexpected)} {sorted(self.unexpected)[:limit]}")
        return " ".join(parts)


@dataclass
class Audit:
    """Every audited user; the totals count keys (a key present three times is one duplicate)."""

    users: dict[int, UserAudit]
    lost: int
    duplicated: int
    unexpected: int
    ignored: int = 0
    received: int = 0
    expected: int = 0
    by_key_lost: Counter[Key] = field(default_factory=Counter)

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def summary(self, limit: int = 10) -> str:
        """Totals, then one line per user that is not ok (at most ``limit`` users)."""
        head = (f"audit: {len(self.users)} users, expected={self.expected} received={self.received} "
                f"lost={self.lost} duplicated={self.duplicated} unexpected={self.unexpected} "
                f"ignored={self.ignored}")
        bad = [u for u in sorted(self.users.values(), key=lambda u: u.user) if not u.ok()]
        lines = [head, *(u.line(limit) for u in bad[:limit])]
        if len(bad) > limit:
            lines.append(f"... and {len(bad) - limit} more users with differences")
        if self.by_key_lost:
            worst = self.by_key_lost.most_common(limit)
            lines.append(f"most lost keys (key: users): {worst}")
        return "\n".join(lines)


def inbox_entries(client: redis.Redis, namespace: str, user: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(entry id, notification)`` of every entry of ``user``'s inbox, oldest first, paged."""
    key, start = inbox_key(namespace, user), "-"
    while True:
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key, min=start, max="+", count=PAGE)  # type: ignore[assignment]
        for entry_id, fields in page:
            yield entry_id.decode(), json.loads(fields[INBOX_FIELD.encode()])
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0].decode()


def _audit_user(client: redis.Redis, namespace: str, user: int, expected: set[Key]) -> UserAudit:
    seen: Counter[Key] = Counter()
    ignored = 0
    for _, notification in inbox_entries(client, namespace, user):
        key = notification_key(notification)
        if key is None:
            ignored += 1
        else:
            seen[key] += 1
    return UserAudit(
        user=user,
        lost=[k for k in expected if k not in seen],
        duplicated={k: n for k, n in seen.items() if n > 1},
        unexpected=[k for k in seen if k not in expected],
        ignored=ignored,
        received=sum(seen.values()),
    )


def audit_inboxes(client: redis.Redis, expected: Mapping[int, Iterable[Key]], *,
                  namespace: str = DEFAULT_NAMESPACE, users: Iterable[int] | None = None) -> Audit:
    """Compare the inboxes of ``users`` (default: the users in ``expected``) with ``expected``.

    A user listed in ``users`` but absent from ``expected`` is expected to have nothing: each
    audited entry of theirs is unexpected. An expected user left out of ``users`` is not read.
    """
    wanted = {user: set(keys) for user, keys in expected.items()}
    audited = sorted(set(users) if users is not None else set(wanted))
    result = Audit(users={}, lost=0, duplicated=0, unexpected=0)
    for user in audited:
        one = _audit_user(client, namespace, user, wanted.get(user, set()))
        result.users[user] = one
        result.lost += len(one.lost)
        result.duplicated += len(one.duplicated)
        result.unexpected += len(one.unexpected)
        result.ignored += one.ignored
        result.received += one.received
        result.expected += len(wanted.get(user, ()))
        result.by_key_lost.update(one.lost)
    return result
