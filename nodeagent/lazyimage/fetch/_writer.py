"""Cache writes that readers do not wait for.

A cache put syncs a file to disk, which takes milliseconds; an on-demand reader already has
its verified bytes and should not pay for that. Such puts go to a small thread pool shared
by all layers (the agent makes one CacheWriter and gives it to every fetcher). When too many
bytes are waiting to be written, callers wait for their own put instead, so memory stays
bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["BACKLOG_LIMIT", "CacheWriter"]

BACKLOG_LIMIT = 64 << 20
_WORKERS = 2


class CacheWriter:
    """Runs puts on its own threads and counts the bytes not yet written."""

    def __init__(self, workers: int = _WORKERS, backlog_limit: int = BACKLOG_LIMIT) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lazyimage-cache-put")
        self._lock = threading.Lock()
        self._backlog = 0
        self.backlog_limit = backlog_limit

    def has_room(self) -> bool:
        with self._lock:
            return self._backlog < self.backlog_limit

    def submit(self, put: Callable[[], None], size: int) -> Future[None]:
        """Run ``put`` (which must not raise) on a writer thread."""
        with self._lock:
            self._backlog += size

        def run() -> None:
            try:
                put()
            finally:
                with self._lock:
                    self._backlog -= size

        return self._pool.submit(run)
