"""NATS subject wildcard matching, as the server does it.

A pattern is dot-separated tokens where ``*`` matches exactly one token and
a final ``>`` matches one or more remaining tokens. :class:`SubjectIndex`
answers "which is the first pattern, in table order, matching this subject"
by walking a token trie, so the cost depends on the subject's depth and not
on the number of routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["SubjectIndex", "matches", "validate_pattern"]

T = TypeVar("T")


def validate_pattern(pattern: str) -> list[str]:
    """Split a subject pattern into tokens.

    Raises:
      ValueError: if a token is empty, contains a wildcard among other
        characters, or ``>`` is not the last token.
    """
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if not token:
            raise ValueError(f"subject pattern {pattern!r} has an empty token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ValueError(f"subject pattern {pattern!r}: wildcard inside token {token!r}")
        if token == ">" and i != len(tokens) - 1:
            raise ValueError(f"subject pattern {pattern!r}: '>' must be the last token")
    return tokens


def matches(pattern: str, subject: str) -> bool:
    """Return whether ``subject`` matches the NATS ``pattern``."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]) or not s[i]:
            return False
    return len(s) == len(p)


class _Node(Generic[T]):
    __slots__ = ("children", "rest", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        #: (table index, value) of a pattern ending here with ``>``.
        self.rest: tuple[int, T] | None = None
        #: (table index, value) of a pattern ending exactly here.
        self.value: tuple[int, T] | None = None


class SubjectIndex(Generic[T]):
    """Find the first of an ordered list of patterns that matches a subject.

    Parameters:
      entries: ``(pattern, value)`` pairs; on overlap the earlier entry wins.

    Raises:
      ValueError: if a pattern is malformed or listed twice.
    """

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._root: _Node[T] = _Node()
        for index, (pattern, value) in enumerate(entries):
            node = self._root
            tokens = validate_pattern(pattern)
            if tokens[-1] == ">":
                for token in tokens[:-1]:
                    node = node.children.setdefault(token, _Node())
                if node.rest is not None:
                    raise ValueError(f"subject pattern {pattern!r} is listed twice")
                node.rest = (index, value)
                continue
            for token in tokens:
                node = node.children.setdefault(token, _Node())
            if node.value is not None:
                raise ValueError(f"subject pattern {pattern!r} is listed twice")
            node.value = (index, value)

    def lookup(self, subject: str) -> T | None:
        """Return the value of the first pattern matching ``subject``, or None."""
        best: tuple[int, T] | None = None
        tokens = subject.split(".")
        last = len(tokens) - 1
        frontier = [self._root]
        for depth, token in enumerate(tokens):
            if not token or token in ("*", ">"):
                return None  # not a publishable subject
            step: list[_Node[T]] = []
            for node in frontier:
                if node.rest is not None and (best is None or node.rest[0] < best[0]):
                    best = node.rest
                for key in (token, "*"):
                    child = node.children.get(key)
                    if child is not None:
                        step.append(child)
            if not step:
                return None if best is None else best[1]
            if depth == last:
                for node in step:
                    if node.value is not None and (best is None or node.value[0] < best[0]):
                        best = node.value
            frontier = step
        return None if best is None else best[1]
