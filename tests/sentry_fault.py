"""``python -m tests.sentry_fault ARGS``: ``fechatter-notify ARGS`` with one bug planted in the bridge.

The bridge has no failure path that reaches Sentry while it holds a payload: parsing turns
every bad event into a dead letter, Redis and NATS failures into a circuit or a counted
failed settle. To test what a *bug* there would report, this launcher makes the bridge's
event parser raise for any payload containing :data:`FAULT_MARKER`, with the payload in the
exception's text (as ``ValueError(f"... {value!r}")`` bugs do) and in the frames' locals. The
batch then fails in ``bridge.pull``'s processing loop, which logs it with its traceback.

Test-only by construction: nothing in the production code reads a flag or an environment
variable for it; the planting happens here, before the real command line runs.
"""

from __future__ import annotations

from typing import Any, Final

#: A payload containing these bytes makes the planted bug raise.
FAULT_MARKER: Final = b"plant-a-bug"


def plant() -> None:
    """Make the parser bridge.batch builds per batch raise on the marker."""
    import bridge.batch

    namespace = vars(bridge.batch)  # the name bridge.batch calls, imported from events
    real = namespace["EventParser"]

    class EventParser(real):  # type: ignore[valid-type]
        def parse(self, subject: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
            if FAULT_MARKER in data:
                raise ValueError(f"cannot handle the event on {subject}: {data.decode(errors='replace')}")
            return super().parse(subject, data, *args, **kwargs)

    namespace["EventParser"] = EventParser


if __name__ == "__main__":
    plant()
    from fechatter_notify.cli import main

    raise SystemExit(main())
