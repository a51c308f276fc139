"""Range requests of one layer: at most ``max_requests`` at once, each bounded by a stall
watchdog, counted in the metrics, and retried with backoff while they fail transiently.

This is the one place the fetcher retries: every byte it fetches goes through
``RangeRequests.download``.
"""

from __future__ import annotations

import random

import anyio
import structlog

from lazyimage import metrics
from lazyimage.errors import UnavailableError
from lazyimage.fetch._config import FetchConfig
from lazyimage.fetch._ranges import ByteRange
from lazyimage.fetch._scheduler import Priority
from lazyimage.fetch._source import RangeSource

__all__ = ["RangeRequests"]

log = structlog.get_logger("lazyimage.fetch")

# A source read that takes longer than stall_timeout + length / this is abandoned. A
# safety net for sources without their own stall check; RegistrySource has a finer one.
_MIN_RATE = 64 << 10
_RETRY_BASE_DELAY = 0.2
_RETRY_MAX_DELAY = 2.0
_READ_AHEAD_REASON = "readahead"  # the fetched_bytes reason of read-ahead


class RangeRequests:
    """Reads spans of one layer's blob from its source."""

    def __init__(self, source: RangeSource, layer: str, config: FetchConfig) -> None:
        self._source = source
        self._layer = layer
        self._config = config
        self._slots: anyio.Semaphore | None = None  # made on first use, in the event loop
        self.fetched = 0  # compressed bytes received, for any reason
        self.last_failure = ""  # why the latest attempt failed, for a demand read's error

    async def download(self, span: ByteRange, priority: Priority, ahead: int = 0) -> bytes:
        """The span's bytes, retrying transient failures with backoff for up to
        ``demand_deadline`` (a demand read's own deadline may end it sooner). ``ahead`` of
        them are read-ahead, counted apart in the metrics."""
        started = anyio.current_time()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._request(span, priority, ahead)
            except UnavailableError as exc:
                self.last_failure = str(exc)
                # Capped exponential backoff, jittered so that layers do not retry in step.
                delay = min(_RETRY_MAX_DELAY, _RETRY_BASE_DELAY * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                elapsed = anyio.current_time() - started
                if elapsed + delay >= self._config.demand_deadline:
                    raise UnavailableError(
                        f"gave up after {attempt} attempts in {elapsed:.1f} s: {exc}",
                        what=f"layer {self._layer}, range {span.offset}-{span.end - 1}",
                    ) from exc
                metrics.FETCH_RETRIES.labels(self._layer).inc()
                log.debug("fetch.retry", layer=self._layer, delay=round(delay, 3), error=str(exc))
                await anyio.sleep(delay)

    async def _request(self, span: ByteRange, priority: Priority, ahead: int) -> bytes:
        """One attempt, abandoned by the watchdog if the source takes too long."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self._config.max_requests)
        limit = self._config.stall_timeout + span.length / _MIN_RATE
        async with self._slots:
            metrics.FETCH_IN_FLIGHT.inc()
            started = anyio.current_time()
            try:
                with anyio.move_on_after(limit) as watchdog:
                    data = await self._source.read(span.offset, span.length)
            finally:
                metrics.FETCH_IN_FLIGHT.dec()
                elapsed = anyio.current_time() - started
                metrics.FETCH_DURATION.labels(priority.reason).observe(elapsed)
        what = f"layer {self._layer}, range {span.offset}-{span.end - 1}"
        if watchdog.cancelled_caught:
            raise UnavailableError(f"no answer within {limit:.1f} s", what=what)
        if len(data) != span.length:
            raise UnavailableError(f"got {len(data)} of {span.length} bytes", what=what)
        metrics.FETCHED_BYTES.labels(self._layer, priority.reason).inc(len(data) - ahead)
        if ahead:
            metrics.FETCHED_BYTES.labels(self._layer, _READ_AHEAD_REASON).inc(ahead)
        self.fetched += len(data)
        return data
