"""``fechatter-notify gateway`` (Procfile ``web:``): serve the SSE gateway until SIGTERM/SIGINT.

SIGHUP re-reads the configuration and applies ``gateway.jwt`` live (see :func:`reload`).
It listens on ``gateway.port`` (``$PORT`` where a Heroku-style platform or Procfile runner sets
it; ``NOTIFY_PORT`` and ``NOTIFY__GATEWAY__PORT`` win over it); a port held by another process
ends the start with :data:`~runtime.ports.RET_PORT_IN_USE`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
from collections.abc import Callable

from aiohttp import web

from gateway.app import build_app, start_server
from gateway.auth import TokenVerifier
from gateway.drain import drain
from runtime import (
    RET_CONFIG,
    RET_OK,
    RET_RUNTIME,
    OffLoopReload,
    PortInUse,
    address_in_use,
    config_path,
    dump_tasks_on_sigusr2,
    init_sentry,
    log_event,
    reload_settings,
    report_port_in_use,
    setup_logging,
    tune_gc,
)
from settings import Loaded, Settings, changed_paths, dotted

log = logging.getLogger(__name__)

def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit (one descriptor per stream); log it.

    Returns:
      tuple[int, int]: the (soft, hard) limit now in effect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log_event(log, "fd_limit_not_raised", logging.WARNING, soft=soft, hard=hard, error=exc)
    log_event(log, "fd_limit", soft=soft, hard=hard)
    return soft, hard


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """Run the gateway with ``loaded`` settings; returns the process exit code."""
    # NOTIFY_LOG_LEVEL=DEBUG for a closer look; no level logs a token (tests/test_gateway_tokens.py).
    setup_logging(os.environ.get("NOTIFY_LOG_LEVEL", "INFO").strip().upper() or "INFO")
    settings = loaded.settings
    init_sentry(settings.sentry, "gateway")
    try:
        verifier = TokenVerifier(settings.gateway.jwt)
    except ValueError as exc:
        log_event(log, "gateway_config_error", logging.ERROR, error=exc)
        return RET_CONFIG
    if not verifier.configured:
        log_event(log, "jwt_key_missing", logging.WARNING,
                  detail="gateway.jwt.public_key is not set: every stream will get 401")
    raise_fd_limit()
    tune_gc()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(settings, verifier, config_path(args)))
    except PortInUse as exc:
        return report_port_in_use(log, "gateway", exc, loaded.origins)
    except OSError as exc:
        log_event(log, "gateway_failed", logging.ERROR, error=exc)
        return RET_RUNTIME
    return RET_OK


def reload(settings: Settings, verifier: TokenVerifier, new: Settings) -> Settings:
    """SIGHUP: token verification (``gateway.jwt``: a rotated key, say) changes live; anything
    else that changed is named as needing a restart. Returns the settings now in effect."""
    changed = [dotted(p) for p in changed_paths(settings, new)]
    live = [p for p in changed if p.startswith("gateway.jwt.")]
    restart = [p for p in changed if p not in live]
    if live:
        try:
            verifier.reconfigure(new.gateway.jwt)
        except ValueError as exc:
            log_event(log, "config_reload_refused", logging.ERROR, reason=str(exc))
            return settings
    log_event(log, "config_reloaded", applied=",".join(live) or "-")
    if restart:
        log_event(log, "config_needs_restart", logging.WARNING, fields=",".join(restart))
    gateway = settings.gateway.model_copy(update={"jwt": new.gateway.jwt})
    return settings.model_copy(update={"gateway": gateway})


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop cuts the per-write cost that bounds fan-out at thousands of streams.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(settings: Settings, verifier: TokenVerifier, path: str | None) -> None:
    app = build_app(settings, verifier=verifier)
    host, port = settings.gateway.host, settings.gateway.port
    try:
        runner, port = await start_server(app, host, port)
    except OSError as exc:
        if address_in_use(exc):
            raise PortInUse(("gateway", "port"), host, port, exc) from exc
        raise
    log_event(log, "gateway_listening", host=settings.gateway.host, port=port,
              namespace=settings.redis.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_tasks_on_sigusr2(loop)

    def on_reloaded(new: Settings) -> None:
        nonlocal settings
        settings = reload(settings, verifier, new)

    # The file is read in a thread: streams and /healthz are served meanwhile.
    loop.add_signal_handler(signal.SIGHUP, OffLoopReload(lambda: reload_settings(path), on_reloaded))
    try:
        await stop.wait()
        stop.clear()
        await _drain_unless_stopped(app, runner, settings.gateway.drain_window, stop)
    finally:
        log_event(log, "gateway_stopping")
        await runner.cleanup()
        log_event(log, "gateway_stopped")


async def _drain_unless_stopped(
    app: web.Application, runner: web.AppRunner, window: float, stop: asyncio.Event
) -> None:
    """Drain the open streams (gateway/drain.py); a second SIGTERM/SIGINT cuts it short."""
    draining = asyncio.ensure_future(drain(app, runner, window))
    interrupted = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({draining, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (draining, interrupted):
            task.cancel()
    if interrupted.done() and not interrupted.cancelled():
        log_event(log, "gateway_drain_interrupted", logging.WARNING)
