"""Prefetch and background fill of one layer: chunks into the cache, one span at a time.

A span is claimed only when its turn came (higher priorities idle, the bucket allowed its
bytes), so a reader never waits behind a throttled request. Several spans are in flight
together: they share a slow link better than one, and some download while others are
verified and stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import anyio

from lazyimage.errors import LazyImageError
from lazyimage.estargz import Chunk
from lazyimage.fetch._config import ChunkStore, FetchConfig
from lazyimage.fetch._coverage import Coverage
from lazyimage.fetch._flights import Flight, FlightTable, member_of
from lazyimage.fetch._ranges import ByteRange, Span, merge_ranges
from lazyimage.fetch._scheduler import Pacer, Priority
from lazyimage.fetch._spans import SpanFetcher

__all__ = ["Prefetcher"]

# Slots of one prefetch's ranges in flight together: a range of FetchConfig.prefetch_range
# takes one, so several streams fill a link that one cannot and some download while others
# are verified; bulk ranges (max_range) share them so that two are in flight, which bounds
# the memory they hold.
_PREFETCH_SLOTS = 4
_BULK_IN_FLIGHT = 2
# Chunks a prefetch plans at a time: a layer's fill never holds a Chunk, a member and a
# flight for each of its (maybe 100,000) chunks at once, and a window of small files still
# makes ranges of a useful size.
_PREFETCH_WINDOW = 4096


def _windows(chunks: Iterable[Chunk], size: int) -> Iterator[list[Chunk]]:
    """``chunks`` in lists of about ``size``, never splitting the chunks of one gzip member
    (in blob order those are neighbours), so a member is fetched in one range."""
    window: list[Chunk] = []
    for chunk in chunks:
        if len(window) >= size and chunk.offset != window[-1].offset:
            yield window
            window = []
        window.append(chunk)
    if window:
        yield window


class Prefetcher:
    """Runs one layer's prefetches; ``close`` ends them."""

    def __init__(
        self,
        config: FetchConfig,
        cache: ChunkStore,
        table: FlightTable,
        coverage: Coverage,
        pacer: Pacer,
        spans: SpanFetcher,
    ) -> None:
        self._config = config
        self._cache = cache
        self._table = table
        self._coverage = coverage
        self._pacer = pacer
        self._spans = spans
        self._running: set[anyio.CancelScope] = set()
        self._closed = False

    async def prefetch(self, chunks: Iterable[Chunk], priority: Priority) -> None:
        """LayerFetcher.prefetch: ``chunks`` into the cache, a window at a time."""
        failures: list[LazyImageError] = []
        # Chunks that another flight (a reader, the mount's own prefetch) was fetching when
        # their window came: waited for at the end, so that a prefetch that returns has its
        # chunks at hand, whoever fetched them. Their events only: a flight holds its bytes.
        others: dict[int, anyio.Event] = {}
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                async with anyio.create_task_group() as group:
                    slots = anyio.Semaphore(_PREFETCH_SLOTS)
                    for window in _windows(chunks, _PREFETCH_WINDOW):
                        longest, weight = self._ranges_for(window, priority)
                        flights = self._table.flights_of(window)
                        others.update((id(f.done), f.done) for f in flights)
                        members: dict[ByteRange, list[Chunk]] = {}
                        for chunk in self.wanted(window):
                            members.setdefault(member_of(chunk), []).append(chunk)
                        gap = self._config.merge_gap
                        for span in merge_ranges(members, max_gap=gap, max_size=longest):
                            for _ in range(weight):  # only this loop acquires: no deadlock
                                await slots.acquire()
                            claimed = await self._claim_span(span, members, priority)
                            if not claimed:
                                _release(slots, weight)
                                continue
                            group.start_soon(
                                self._fetch_span, claimed, priority, slots, weight, failures
                            )
                for done in others.values():
                    await done.wait()
            finally:
                self._running.discard(scope)
        if failures and not self._closed:
            raise failures[0]

    def _ranges_for(self, window: list[Chunk], priority: Priority) -> tuple[int, int]:
        """The longest range for a window of chunks, and the slots each of its ranges takes."""
        config = self._config
        if priority is Priority.BACKGROUND:
            return config.background_range, 1
        if window[-1].end - window[0].offset >= config.bulk_prefetch:
            return config.max_range, _PREFETCH_SLOTS // _BULK_IN_FLIGHT
        return config.prefetch_range, 1

    def close(self) -> None:
        """End running prefetches quietly."""
        self._closed = True
        for scope in list(self._running):
            scope.cancel()

    def wanted(self, chunks: Iterable[Chunk]) -> list[Chunk]:
        """One chunk per digest, among those neither cached nor in flight."""
        seen: dict[str, Chunk] = {}
        for chunk in chunks:
            if chunk.digest in seen or chunk.digest in self._table:
                continue
            if self._cache.contains(chunk.digest):
                self._coverage.add(member_of(chunk))
                continue
            seen[chunk.digest] = chunk
        return list(seen.values())

    def uncached_bytes(self, chunks: Iterable[Chunk]) -> int:
        """The compressed bytes that fetching ``chunks`` would take from the bucket."""
        return sum(member.length for member in {member_of(c) for c in self.wanted(chunks)})

    async def _claim_span(
        self, span: Span, members: dict[ByteRange, list[Chunk]], priority: Priority
    ) -> list[Flight]:
        """Wait for this span's turn, then claim what of it is still needed."""
        needed = [part for part in span.parts if self._needs(members[part])]
        if not needed:
            return []
        await self._pacer.wait_turn(priority, max(p.end for p in needed) - needed[0].offset)
        claim = self._table.claim((c for p in needed for c in members[p]), self._cache)
        for chunk in claim.hits:
            self._coverage.add(member_of(chunk))
        return claim.owned

    def _needs(self, chunks: list[Chunk]) -> bool:
        return any(
            c.digest not in self._table and not self._cache.contains(c.digest) for c in chunks
        )

    async def _fetch_span(
        self,
        flights: list[Flight],
        priority: Priority,
        slots: anyio.Semaphore,
        weight: int,
        failures: list[LazyImageError],
    ) -> None:
        try:
            await self._spans.fetch(flights, priority)
        finally:
            _release(slots, weight)
        failures.extend(f.error for f in flights if isinstance(f.error, LazyImageError))


def _release(slots: anyio.Semaphore, count: int) -> None:
    for _ in range(count):
        slots.release()
