"""One log line per dead letter, until a flood: then one line per interval with the counts.

Every dead letter is stored in full (subject, headers, payload, code, reason) and counted in
``dead_letters_total{consumer,code}``; its log line is for the on-call engineer's eye. A publisher
gone wrong sends hundreds of bad payloads a second, and a formatted warning line costs ~0.2 ms of
the bridge's CPU each (two handlers format it): a flood would spend a fifth of a core on lines
nobody reads one by one. So the first :data:`BURST` dead letters of each interval are logged as
they come; the rest of the interval is summed up in one ``dead_letters_suppressed`` line at its end
with the count per source and code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Final

from runtime import log_event

__all__ = ["BURST", "INTERVAL_S", "DeadLetterLog"]

#: Dead letters logged one by one per interval.
BURST: Final = 20
#: Seconds per interval.
INTERVAL_S: Final = 10.0


class DeadLetterLog:
    """Logs dead letters one by one up to :data:`BURST` per :data:`INTERVAL_S`, then sums them up.

    Parameters:
      log(logging.Logger): Where the lines go.
      burst(int), interval_s(float): The budget (tests make them small).
    """

    def __init__(self, log: logging.Logger, burst: int = BURST, interval_s: float = INTERVAL_S) -> None:
        self._log = log
        self._burst = burst
        self._interval_s = interval_s
        self._started = -interval_s
        self._logged = 0
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def record(self, *, consumer: str, code: str, **fields: Any) -> None:
        """One dead letter: a ``dead_letter`` line, or a count for the interval's summary."""
        now = time.monotonic()
        if now - self._started >= self._interval_s:
            self.flush()
            self._started, self._logged = now, 0
        if self._logged < self._burst:
            self._logged += 1
            log_event(self._log, "dead_letter", logging.WARNING, consumer=consumer, code=code, **fields)
            return
        self._suppressed[consumer, code] += 1
        if self._flush is None:
            delay = max(0.0, self._started + self._interval_s - now)
            self._flush = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        """Log what the interval suppressed (nothing when it suppressed nothing)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._suppressed:
            return
        counts = ",".join(f"{consumer}/{code}:{n}" for (consumer, code), n in sorted(self._suppressed.items()))
        log_event(self._log, "dead_letters_suppressed", logging.WARNING, count=sum(self._suppressed.values()),
                  counts=counts, interval_s=self._interval_s, logged=self._burst,
                  hint="each is stored in full: fechatter-notify dlq list")
        self._suppressed.clear()
