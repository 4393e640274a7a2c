"""Structured logs: one line per state change, ``key=value`` pairs an on-call engineer can grep.

Use :func:`log_event` with an event name and fields (subject, stream, consumer, seq,
delivered, ...). Never pass secrets: URLs are redacted here as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from settings import redact_urls_in

#: LogRecord's own attributes, plus the two it sets while formatting (``extra`` may not use them).
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fmt(value: Any) -> str:
    text = str(value)
    if "://" in text:
        text = redact_urls_in(text)
    if text == "" or any(ch in text for ch in ' "='):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=… logger=… event=… key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_fmt(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                parts.append(f"{key}={_fmt(value)}")
        if record.exc_info:
            parts.append(f"error={_fmt(self.formatException(record.exc_info).splitlines()[-1])}")
        return " ".join(parts)


def setup_logging(level: str = "INFO") -> None:
    """Send every log line to stderr in logfmt (idempotent); ``kill -USR1`` dumps every thread's
    Python stack to stderr, for a process that seems stuck."""
    import faulthandler
    import signal
    import time

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    LogfmtFormatter.converter = time.gmtime
    root = logging.getLogger()
    if any(isinstance(h.formatter, LogfmtFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(level)


def dump_tasks_on_sigusr2(loop: Any) -> None:
    """``kill -USR2``: print where every asyncio task of ``loop`` waits, to stderr (a process
    whose loop is idle but whose work does not finish: SIGUSR1 shows only the loop's own stack)."""
    import asyncio
    import signal

    def dump() -> None:
        tasks = asyncio.all_tasks(loop)
        print(f"--- {len(tasks)} asyncio tasks ---", file=sys.stderr)
        for task in tasks:
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    if hasattr(signal, "SIGUSR2"):
        loop.add_signal_handler(signal.SIGUSR2, dump)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one state change: ``log_event(log, "consumer_recreated", stream=..., consumer=...)``."""
    clean = {k if k not in _RESERVED else f"{k}_": v for k, v in fields.items()}
    logger.log(level, event, extra=clean)
