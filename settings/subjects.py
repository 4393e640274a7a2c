"""NATS subject rules: validity, overlap and containment.

These decide the "no responders" family at config time: a consumer filter outside its
stream, two streams claiming one subject, or a core subject that a stream also captures.
"""

from __future__ import annotations

_FORBIDDEN_CHARS = frozenset(" \t\r\n")


def subject_problem(subject: str, *, wildcards: bool = True) -> str | None:
    """Say what is wrong with ``subject`` as a NATS subject, or ``None`` when it is valid."""
    if not subject:
        return "a subject cannot be empty"
    if any(ch in _FORBIDDEN_CHARS for ch in subject):
        return "a subject cannot contain spaces or control characters"
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if token == "":
            return "a subject cannot have an empty token (leading, trailing or doubled '.')"
        if not wildcards and token in ("*", ">"):
            return "wildcards are not allowed here"
        if token == ">" and index != len(tokens) - 1:
            return "'>' may only be the last token"
        if len(token) > 1 and ("*" in token or ">" in token):
            return f"wildcard inside token {token!r}: '*' and '>' must stand alone between dots"
    return None


def subjects_overlap(a: str, b: str) -> bool:
    """True when some concrete subject matches both ``a`` and ``b``."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(ta) == len(tb)


def subject_within(inner: str, outer: str) -> bool:
    """True when every subject matched by ``inner`` is also matched by ``outer``."""
    ti, to = inner.split("."), outer.split(".")
    for index, o in enumerate(to):
        if o == ">":
            return len(ti) > index
        if index >= len(ti):
            return False
        i = ti[index]
        if i == ">":
            return False
        if o != "*" and i != o:
            return False
    return len(ti) == len(to)

