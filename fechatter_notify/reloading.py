"""SIGHUP in every process: load the configuration again, or say why not and keep running.

Each process decides what it can apply live (:mod:`bridge.reload`, the gateway's token
verification, the worker supervisor's restart of its processes); reading the file, and
refusing a broken one with its problems in the log, is the same everywhere and lives here.
"""

from __future__ import annotations

import argparse
import logging

from fechatter_notify.log import log_event
from settings import ConfigError, ConfigFileError, load_settings
from settings.model import Settings

__all__ = ["config_path", "reload_settings"]

log = logging.getLogger("fechatter_notify.reload")


def config_path(args: argparse.Namespace) -> str | None:
    """The ``--config`` the process was started with (None: the default search again)."""
    return getattr(args, "sub_config", None) or getattr(args, "config", None)


def reload_settings(path: str | None) -> Settings | None:
    """The configuration at ``path`` (and the environment), or None after logging why not."""
    try:
        return load_settings(path).settings
    except ConfigFileError as exc:
        log_event(log, "config_reload_refused", logging.ERROR, reason=str(exc))
        return None
    except ConfigError as exc:
        errors = [p for p in exc.problems if p.level == "error"]
        log_event(log, "config_reload_refused", logging.ERROR, errors=len(errors))
        for problem in errors:  # without the value: a log line never carries a setting's value
            log_event(log, "config_problem", logging.ERROR, code=problem.code, path=problem.path,
                      origin=problem.origin, detail=problem.message)
        return None
