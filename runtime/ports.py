"""Listening ports: which setting chose each one, and one clear error when it is taken.

Every process (bridge, worker, gateway) binds its HTTP endpoints before it does anything else,
and a port held by another process ends the start with :class:`PortInUse` and exit code
:data:`RET_PORT_IN_USE`: a process that runs on without the endpoints it was told to serve
is invisible to its supervisor's health checks and to Prometheus.
"""

from __future__ import annotations

import errno
import logging
import sys

from runtime.exit_codes import RET_PORT_IN_USE
from runtime.log import log_event
from settings import Origins, Path

__all__ = ["RET_PORT_IN_USE", "PortInUse", "address_in_use", "report_port_in_use"]



class PortInUse(Exception):
    """A port this process must listen on is held by another process.

    Parameters:
      setting(Path): The setting that chose the port (``("health", "port")``).
      host(str), port(int): The address that could not be bound.
      error(OSError): What bind() said.
    """

    def __init__(self, setting: Path, host: str, port: int, error: OSError) -> None:
        super().__init__(f"{'.'.join(str(p) for p in setting)}: {host}:{port} is in use ({error.strerror})")
        self.setting = setting
        self.host = host
        self.port = port
        self.error = error


def address_in_use(exc: BaseException) -> bool:
    """True when ``exc`` is bind()'s "address already in use"."""
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def describe(exc: PortInUse, origins: Origins) -> str:
    """One sentence naming the port, the host, the setting and where that value came from."""
    name = ".".join(str(p) for p in exc.setting)
    origin = origins.get(exc.setting, "default")
    return (f"cannot listen on {exc.host}:{exc.port}: the port is in use by another process; it was chosen by "
            f"{name} ({origin}); stop that process or set {name} to a free port")


def report_port_in_use(log: logging.Logger, process: str, exc: PortInUse, origins: Origins) -> int:
    """Log and print the error the same way in every process; return :data:`RET_PORT_IN_USE`."""
    message = describe(exc, origins)
    log_event(log, "port_in_use", logging.ERROR, process_type=process, host=exc.host, port=exc.port,
              setting=".".join(str(p) for p in exc.setting), origin=origins.get(exc.setting, "default"),
              reason=message)
    print(f"fechatter-notify {process}: {message}", file=sys.stderr)
    return RET_PORT_IN_USE
