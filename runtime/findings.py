"""Findings of a live check: :class:`settings.Problem` records, collected in order.

``fechatter-notify doctor`` asks each package that owns a server's state (the bridge for JetStream
and its dead letters, the workers for dramatiq's queues, the gateway for its streams) for its
findings, and only formats them.
"""

from __future__ import annotations

from typing import Literal

from settings import Problem

__all__ = ["Findings"]


class Findings(list[Problem]):
    """The findings of one check, each a :class:`settings.Problem` with its place."""

    def add(self, level: Literal["error", "warning", "info"], code: str, path: str, message: str, *, origin: str,
            fix: str | None = None) -> None:
        self.append(Problem(level, code, path, message, origin=origin, fix=fix))
