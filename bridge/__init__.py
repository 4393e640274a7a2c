"""bridge: NATS (JetStream durable pull consumers + core NATS subjects) -> typed jobs on dramatiq's Redis queues.

JetStream messages are acked only after their batch is in Redis; bad payloads become dead
letters. Start with :class:`Bridge` (:mod:`bridge.app`) or ``fechatter-notify bridge``.

What other packages may use is named here (``__all__``) and loads on first use, so importing a
submodule does not import the whole process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import lazy_face

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.dead_letter_store import DeadLetter, DeadLetterStore, Replay, ReplayOutcome
    from bridge.diagnose import diagnose_dead_letters, diagnose_nats
    from bridge.errors import BridgeError
    from bridge.main import run
    from bridge.pull_request import PullRequest, PullState, next_pull
    from bridge.release import provision_once

__all__ = [
    # The process
    "Bridge",
    "BridgeError",
    "run",
    # Pull decisions (pure)
    "PullRequest",
    "PullState",
    "next_pull",
    # Operator commands
    "diagnose_dead_letters",
    "diagnose_nats",
    "provision_once",
    # Dead letters (fechatter-notify dlq)
    "DeadLetter",
    "DeadLetterStore",
    "Replay",
    "ReplayOutcome",
]

_HOME: dict[str, str] = {
    "Bridge": "app",
    "BridgeError": "errors",
    "run": "main",
    "PullRequest": "pull_request",
    "PullState": "pull_request",
    "next_pull": "pull_request",
    "diagnose_dead_letters": "diagnose",
    "diagnose_nats": "diagnose",
    "provision_once": "release",
    "DeadLetter": "dead_letter_store",
    "DeadLetterStore": "dead_letter_store",
    "Replay": "dead_letter_store",
    "ReplayOutcome": "dead_letter_store",
}

__getattr__ = lazy_face(__name__, _HOME)
