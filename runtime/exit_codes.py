"""Every exit code of the ``fechatter-notify`` command and its processes, in one place.

The README's table (bridge, worker, gateway, provision) documents the same numbers; supervisors
and release steps act on them, so a number keeps its meaning across every subcommand.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RET_CONFIG", "RET_OK", "RET_PORT_IN_USE", "RET_REFUSED", "RET_RUNTIME"]

#: Stopped as asked (SIGTERM/SIGINT), or the command did what it was asked.
RET_OK: Final = 0
#: A crash, a worker process that died, or a command that failed (``publish``; ``dlq``: something
#: selected stays a dead letter).
RET_RUNTIME: Final = 1
#: The configuration or the command line has errors; ``doctor`` found an error; ``dev`` has no server;
#: ``dlq``: Redis did not answer.
RET_CONFIG: Final = 2
#: JetStream is not as the settings describe and may not be changed (``provision: verify``), the
#: server refused it, or NATS/JetStream never answered (bridge, ``provision``).
RET_REFUSED: Final = 3
#: A port the process must listen on is in use by another process (distinct from 1, a crash, and
#: 2, a configuration error: the configuration may be right and another process in the way).
RET_PORT_IN_USE: Final = 4
