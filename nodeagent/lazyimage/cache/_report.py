"""Write failures: counted every time, logged at most once per errno per interval.

A full disk fails every chunk written to it; one log line per chunk would flood the logs
exactly when the node is already in trouble.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable

import structlog

from lazyimage import metrics

__all__ = ["WriteErrorReporter"]

log = structlog.get_logger(__name__)


class WriteErrorReporter:
    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, exc: OSError, *, key: str, size: int, root: str) -> None:
        name = errno.errorcode.get(exc.errno or 0, "UNKNOWN")
        metrics.CACHE_WRITE_ERRORS.labels(name).inc()
        now = self._clock()
        with self._lock:
            last = self._last.get(name)
            if last is not None and now - last < self._interval:
                self._suppressed[name] = self._suppressed.get(name, 0) + 1
                return
            self._last[name] = now
            suppressed = self._suppressed.pop(name, 0)
        log.warning(
            "cache.write_failed",
            errno=name,
            error=exc.strerror or str(exc),
            digest=f"sha256:{key}",
            size=size,
            root=root,
            suppressed_since_last=suppressed,
        )
