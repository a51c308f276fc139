"""Range requests of one layer: at most ``max_requests`` at once, each given a deadline the
source retries within, and counted in the metrics.

The fetcher does not retry a failed request itself: the source does (``RegistrySource``
under the registry client's ``RetryPolicy``), until the deadline passed down from here.
Besides that the fetcher only fetches a member once more after a failed verification
(``_delivery``). docs/data-path.md ("Retries and the registry's bound") gives the bound.
"""

from __future__ import annotations

import anyio

from lazyimage import metrics
from lazyimage.errors import UnavailableError
from lazyimage.fetch._config import FetchConfig
from lazyimage.fetch._ranges import ByteRange
from lazyimage.fetch._scheduler import Priority
from lazyimage.fetch._source import RangeSource

__all__ = ["DEADLINE_GRACE", "RangeRequests"]

# How long past its deadline a source read may run before it is cut off here: the registry
# client returns within its CallBound.margin (1 s) of a deadline; a source that ignores the
# deadline is held to it all the same.
DEADLINE_GRACE = 1.0
_READ_AHEAD_REASON = "readahead"  # the fetched_bytes reason of read-ahead


class RangeRequests:
    """Reads spans of one layer's blob from its source."""

    def __init__(self, source: RangeSource, layer: str, config: FetchConfig) -> None:
        self._source = source
        self._layer = layer
        self._config = config
        self._slots: anyio.Semaphore | None = None  # made on first use, in the event loop
        self.fetched = 0  # compressed bytes received, for any reason
        self.last_failure = ""  # why the latest request failed, for a demand read's error

    async def download(
        self, span: ByteRange, priority: Priority, ahead: int = 0
    ) -> bytes | memoryview:
        """The span's bytes, within ``demand_deadline`` of the call (waiting for a request
        slot included), or UnavailableError. ``ahead`` of them are read-ahead, counted apart
        in the metrics."""
        deadline = anyio.current_time() + self._config.demand_deadline
        what = f"layer {self._layer}, range {span.offset}-{span.end - 1}"
        try:
            data = await self._request(span, priority, deadline, what)
        except UnavailableError as exc:
            self.last_failure = str(exc)
            raise
        if len(data) != span.length:
            raise UnavailableError(f"got {len(data)} of {span.length} bytes", what=what)
        metrics.FETCHED_BYTES.labels(self._layer, priority.reason).inc(len(data) - ahead)
        if ahead:
            metrics.FETCHED_BYTES.labels(self._layer, _READ_AHEAD_REASON).inc(ahead)
        self.fetched += len(data)
        return data

    async def _request(
        self, span: ByteRange, priority: Priority, deadline: float, what: str
    ) -> bytes | memoryview:
        if self._slots is None:
            self._slots = anyio.Semaphore(self._config.max_requests)
        with anyio.move_on_after(deadline + DEADLINE_GRACE - anyio.current_time()) as cut:
            async with self._slots:
                metrics.FETCH_IN_FLIGHT.inc()
                started = anyio.current_time()
                try:
                    return await self._source.read(span.offset, span.length, deadline=deadline)
                finally:
                    metrics.FETCH_IN_FLIGHT.dec()
                    elapsed = anyio.current_time() - started
                    metrics.FETCH_DURATION.labels(priority.reason).observe(elapsed)
        assert cut.cancelled_caught
        raise UnavailableError(
            f"not served within {self._config.demand_deadline:g} s (the source overran its "
            "deadline)",
            what=what,
        )
