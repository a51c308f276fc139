"""Verified chunks to their waiters, then to the cache.

Chunks are verified from their members' bytes, small batches on the event loop and the rest
in worker threads. A member with a chunk that fails is fetched again, once, on its own; a
chunk that fails twice fails its flight. Demand reads do not wait for the cache writes
(the process's CacheWriter runs them) unless the writer is behind; prefetch always waits,
which paces it to the disk.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

import anyio
import structlog

from lazyimage import metrics
from lazyimage.errors import LazyImageError, VerificationError
from lazyimage.fetch._config import ChunkStore
from lazyimage.fetch._coverage import Coverage
from lazyimage.fetch._flights import ABANDONED, Flight, FlightTable
from lazyimage.fetch._ranges import ByteRange
from lazyimage.fetch._readahead import ReadAhead
from lazyimage.fetch._requests import RangeRequests
from lazyimage.fetch._scheduler import Priority
from lazyimage.fetch._verify import batches, verify_all
from lazyimage.fetch._writer import CacheWriter

__all__ = ["Delivery", "Item"]

log = structlog.get_logger("lazyimage.fetch")

# A member's bytes (a view into its span's), with the flights of the chunks it holds.
Item = tuple[ByteRange, list[Flight], memoryview]
# Members up to this many compressed bytes in all are verified on the event loop: at most
# about 0.3 ms of inflate and sha256, less than handing them to a worker thread and back.
_INLINE_VERIFY = 64 << 10
_INLINE_VERIFY_OUTPUT = 256 << 10  # and inflate to at most this many (no gzip bomb inline)
_FILL_BATCH = 256 << 10  # compressed bytes per batch of prefetch and background fill


class Delivery:
    """Verifies, hands out and stores the chunks of one layer."""

    def __init__(
        self,
        layer: str,
        cache: ChunkStore,
        table: FlightTable,
        requests: RangeRequests,
        read_ahead: ReadAhead,
        coverage: Coverage,
        writer: CacheWriter,
    ) -> None:
        self._layer = layer
        self._cache = cache
        self._table = table
        self._requests = requests
        self._read_ahead = read_ahead
        self._coverage = coverage
        self._writer = writer
        self._lock = threading.Lock()  # writer threads end the writes too
        self._writes: set[Future[None]] = set()

    async def deliver(self, items: list[Item], priority: Priority) -> None:
        """Verify chunks from their members' bytes, in batches on worker threads. A member
        with a chunk that fails is fetched again, once, on its own."""
        failed: list[tuple[ByteRange, list[Flight]]] = []
        if priority is not Priority.DEMAND:
            # Prefetch and fill: one small batch at a time, stored before the next is inflated,
            # so a layer holds one batch of inflated bytes rather than its whole span's (a
            # priority zone inflates to tens of MB), and its first files are ready soonest.
            for batch in batches(items, _FILL_BATCH):
                await self._verify_batch(batch, priority, failed, False)
        else:
            groups = batches(items)
            if len(groups) == 1:
                await self._verify_batch(groups[0], priority, failed, False)
            else:
                async with anyio.create_task_group() as group:
                    for batch in groups:
                        group.start_soon(self._verify_batch, batch, priority, failed, False)
        for member, flights in failed:
            try:
                again = await self._requests.download(member, priority)
            except LazyImageError as exc:
                for flight in flights:
                    self._table.fail(flight, exc)
                continue
            await self._verify_batch([(member, flights, memoryview(again))], priority, [], True)

    async def flush(self) -> None:
        """Wait until every chunk handed to the cache writer is written."""
        with self._lock:
            pending = list(self._writes)
        if pending:
            await anyio.to_thread.run_sync(wait_futures, pending)

    async def _verify_batch(
        self,
        items: list[Item],
        priority: Priority,
        failed: list[tuple[ByteRange, list[Flight]]],
        last_try: bool,
    ) -> None:
        work = [(flight.chunk, data) for _, flights, data in items for flight in flights]
        if (
            sum(len(data) for _, data in work) <= _INLINE_VERIFY
            and sum(chunk.size for chunk, _ in work) <= _INLINE_VERIFY_OUTPUT
        ):
            # Inflating and hashing this little takes less than the hop to a worker thread.
            results = iter(verify_all(work))
        else:
            results = iter(await anyio.to_thread.run_sync(verify_all, work))
        verified: list[Flight] = []
        for member, flights, _ in items:
            bad: list[Flight] = []
            for flight in flights:
                result = next(results)
                if isinstance(result, bytes):
                    self._table.deliver(flight, result)
                    verified.append(flight)
                elif flight.ahead:
                    self._read_ahead_refused(flight, result)
                else:
                    self._verification_failed(flight, result, last_try)
                    bad.append(flight)
            if len(bad) < len(flights):
                self._coverage.add(member)
            if bad and not last_try:
                failed.append((member, bad))
        if verified:
            await self._store(verified, priority)

    def _read_ahead_refused(self, flight: Flight, exc: LazyImageError) -> None:
        """A read-ahead chunk failed verification: not cached, not fetched again now. A
        reader that asks for it later fetches it as its own, with the usual retry."""
        chunk = flight.chunk
        metrics.VERIFICATION_FAILURES.labels(self._layer).inc()
        log.warning(
            "fetch.chunk_verification_failed",
            refetch=False,
            read_ahead=True,
            layer=self._layer,
            path=chunk.path,
            offset=chunk.chunk_offset,
            blob_range=f"{chunk.offset}-{chunk.end - 1}",
            error=str(exc),
        )
        self._read_ahead.refused(chunk)
        self._table.fail(flight, ABANDONED)

    def _verification_failed(self, flight: Flight, exc: LazyImageError, last_try: bool) -> None:
        chunk = flight.chunk
        metrics.VERIFICATION_FAILURES.labels(self._layer).inc()
        fields = {
            "layer": self._layer,
            "path": chunk.path,
            "offset": chunk.chunk_offset,
            "blob_range": f"{chunk.offset}-{chunk.end - 1}",
            "error": str(exc),
        }
        if not last_try:
            log.warning("fetch.chunk_verification_failed", refetch=True, **fields)
            return
        log.error("fetch.chunk_verification_failed", refetch=False, **fields)
        error = VerificationError(
            f"layer {self._layer}: chunk of {chunk.path!r} at offset {chunk.chunk_offset} "
            f"(blob bytes {chunk.offset}-{chunk.end - 1}) failed verification twice: {exc}"
        )
        error.__cause__ = exc
        self._table.fail(flight, error)

    async def _store(self, flights: list[Flight], priority: Priority) -> None:
        """Put verified chunks in the cache, in one worker-thread call. Demand reads do not
        wait for the writes unless the writer is behind; prefetch always waits, which paces
        it to the disk."""

        # A demand read takes its bytes from its flights once they are delivered; a prefetch
        # never does, and its flights live until its whole span is done, so they drop their
        # bytes once stored: a span of a priority zone is tens of MB inflated. A reader that
        # waited on such a flight and finds no bytes claims the chunk again, from the cache.
        release = priority is not Priority.DEMAND

        def put() -> None:
            for flight in flights:
                try:
                    assert flight.data is not None
                    self._cache.put(flight.chunk.digest, flight.data)
                except Exception:
                    log.exception("fetch.cache_put_failed", layer=self._layer)
                finally:
                    self._table.forget(flight)
                    if release:
                        flight.data = None

        if priority is Priority.DEMAND and self._writer.has_room():
            size = sum(len(flight.data or b"") for flight in flights)
            future = self._writer.submit(put, size)
            with self._lock:
                self._writes.add(future)
            future.add_done_callback(self._written)
            return
        try:
            await anyio.to_thread.run_sync(put)
        finally:
            # Cancelled before the thread ran: the chunks stay uncached, not stuck in flight.
            for flight in flights:
                self._table.forget(flight)

    def _written(self, future: Future[None]) -> None:
        with self._lock:
            self._writes.discard(future)
