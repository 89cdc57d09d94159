"""Rate-limited logging for recurring problems (a peer that is down, a queue that is full).

Exporters meet the same failure thousands of times while a broker or collector is away; one line
when it starts, then at most one every ``interval`` seconds carrying the number held back, keeps
the log readable without hiding anything::

    problems = RateLimitedLog(logging.getLogger(__name__))
    problems.emit("send", logging.ERROR, "cannot reach %s: %s", target, error)
    ...
    problems.recovered("send", logging.INFO, "%s is reachable again", target)
"""

from __future__ import annotations

import logging
import threading
import time

DEFAULT_INTERVAL = 30.0


class RateLimitedLog:
    """Logs at most one line per kind every ``interval`` seconds, counting what it held back.

    Thread-safe. A kind's first line after :meth:`recovered` is logged at once.
    """

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def emit(self, kind: str, level: int, message: str, *args: object) -> None:
        """Log ``message % args`` unless a ``kind`` line was logged less than interval ago."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            message += " (%d similar messages suppressed)"
            args = (*args, held)
        self._logger.log(level, message, *args)

    def recovered(self, kind: str, level: int, message: str, *args: object) -> bool:
        """End a ``kind`` problem: log ``message`` once if one was reported; True if so."""
        with self._lock:
            failing = self._last.pop(kind, None) is not None
            self._held.pop(kind, None)
        if failing:
            self._logger.log(level, message, *args)
        return failing
