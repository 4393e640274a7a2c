"""What every process shares: logging, task shutdown, NATS connection options, config reload, Sentry, ports,
exit codes, the findings of live checks, backoff, and the one Lua script loader.

The bottom layer above ``settings`` and ``events``: it imports only ``settings`` and itself, and ``bridge``,
``workers``, ``gateway`` and the ``fechatter_notify`` shell import it from here, never from its modules.

The names load on first use (module ``__getattr__``), so a process that never reports to Sentry does not pay
for importing ``sentry_sdk``, and ``fechatter-notify --help`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.faces import lazy_face

if TYPE_CHECKING:
    from runtime.backoff import backoff_delay
    from runtime.exit_codes import RET_CONFIG, RET_OK, RET_PORT_IN_USE, RET_REFUSED, RET_RUNTIME
    from runtime.findings import Findings
    from runtime.fleet import ProcessRecord, ProcessView, Registration, Snapshot, advertised_url, collect_snapshot
    from runtime.gc_tuning import tune_gc
    from runtime.log import LogfmtFormatter, dump_tasks_on_sigusr2, log_event, setup_logging
    from runtime.lua import LuaScript
    from runtime.nats_options import connect_options, server_address
    from runtime.ports import PortInUse, address_in_use, report_port_in_use
    from runtime.redis_client import (
        async_client,
        async_pool,
        async_sentinels,
        describe_redis,
        sync_client,
        sync_pool,
    )
    from runtime.reloading import OffLoopReload, config_path, reload_settings, reload_settings_until
    from runtime.sentry import init_sentry
    from runtime.tasks import stop_task

__all__ = [
    "Findings",
    # The fleet: self-registration and the snapshot `top` and /ops show
    "ProcessRecord",
    "ProcessView",
    "Registration",
    "Snapshot",
    "advertised_url",
    "collect_snapshot",
    "lazy_face",
    "LogfmtFormatter",
    "LuaScript",
    "OffLoopReload",
    "PortInUse",
    "RET_CONFIG",
    "RET_OK",
    "RET_PORT_IN_USE",
    "RET_REFUSED",
    "RET_RUNTIME",
    "address_in_use",
    "async_client",
    "async_pool",
    "async_sentinels",
    "backoff_delay",
    "config_path",
    "connect_options",
    "describe_redis",
    "dump_tasks_on_sigusr2",
    "init_sentry",
    "log_event",
    "reload_settings",
    "reload_settings_until",
    "report_port_in_use",
    "server_address",
    "setup_logging",
    "stop_task",
    "sync_client",
    "sync_pool",
    "tune_gc",
]

# Each public name and the module that defines it.
_HOME: dict[str, str] = {
    "backoff_delay": "backoff",
    "Findings": "findings",
    "ProcessRecord": "fleet",
    "ProcessView": "fleet",
    "Registration": "fleet",
    "Snapshot": "fleet",
    "advertised_url": "fleet",
    "collect_snapshot": "fleet",
    "LogfmtFormatter": "log",
    "LuaScript": "lua",
    "dump_tasks_on_sigusr2": "log",
    "log_event": "log",
    "setup_logging": "log",
    "connect_options": "nats_options",
    "server_address": "nats_options",
    "RET_CONFIG": "exit_codes",
    "RET_OK": "exit_codes",
    "RET_PORT_IN_USE": "exit_codes",
    "RET_REFUSED": "exit_codes",
    "RET_RUNTIME": "exit_codes",
    "PortInUse": "ports",
    "address_in_use": "ports",
    "report_port_in_use": "ports",
    "OffLoopReload": "reloading",
    "config_path": "reloading",
    "reload_settings": "reloading",
    "reload_settings_until": "reloading",
    "init_sentry": "sentry",
    "async_client": "redis_client",
    "async_pool": "redis_client",
    "async_sentinels": "redis_client",
    "describe_redis": "redis_client",
    "sync_client": "redis_client",
    "sync_pool": "redis_client",
    "stop_task": "tasks",
    "tune_gc": "gc_tuning",
}


__getattr__ = lazy_face(__name__, _HOME)
