"""What every process shares: logging, task shutdown, NATS connection options, config reload, Sentry, ports.

The bottom layer above ``settings`` and ``events``: it imports only ``settings`` and itself, and ``bridge``,
``workers``, ``gateway`` and the ``fechatter_notify`` shell import it from here, never from its modules.

The names load on first use (module ``__getattr__``), so a process that never reports to Sentry does not pay
for importing ``sentry_sdk``, and ``fechatter-notify --help`` stays quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.log import LogfmtFormatter, dump_tasks_on_sigusr2, log_event, setup_logging
    from runtime.nats_options import connect_options, server_address
    from runtime.ports import RET_PORT_IN_USE, PortInUse, address_in_use, report_port_in_use
    from runtime.reloading import OffLoopReload, config_path, reload_settings, reload_settings_until
    from runtime.sentry import init_sentry
    from runtime.tasks import stop_task

__all__ = [
    "LogfmtFormatter",
    "OffLoopReload",
    "PortInUse",
    "RET_PORT_IN_USE",
    "address_in_use",
    "config_path",
    "connect_options",
    "dump_tasks_on_sigusr2",
    "init_sentry",
    "log_event",
    "reload_settings",
    "reload_settings_until",
    "report_port_in_use",
    "server_address",
    "setup_logging",
    "stop_task",
]

# Each public name and the module that defines it.
_HOME: dict[str, str] = {
    "LogfmtFormatter": "log",
    "dump_tasks_on_sigusr2": "log",
    "log_event": "log",
    "setup_logging": "log",
    "connect_options": "nats_options",
    "server_address": "nats_options",
    "RET_PORT_IN_USE": "ports",
    "PortInUse": "ports",
    "address_in_use": "ports",
    "report_port_in_use": "ports",
    "OffLoopReload": "reloading",
    "config_path": "reloading",
    "reload_settings": "reloading",
    "reload_settings_until": "reloading",
    "init_sentry": "sentry",
    "stop_task": "tasks",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
