"""LayerFetcher: verified chunks of one layer, from the cache or fetched in merged ranges.

A chunk is fetched by exactly one flight, keyed by its digest (see _flights). The task that
finds a chunk neither cached nor in flight claims it; everyone else who needs it waits on
the flight. The claimer fetches the gzip members of all its chunks in merged range
requests (_spans, through _requests, the one place that retries), verifies them, hands the
bytes to the waiters, then stores them in the cache (_delivery). A claimer that is
cancelled abandons its flights; their waiters claim again. A demand miss may take the
chunks that follow it along (_readahead).

Demand reads fetch at once. Prefetch and background fill claim one span at a time, only
when no higher-priority fetch is queued or in flight and after the token bucket allowed
the span's bytes (_prefetch, _scheduler.Pacer), so a reader never waits behind a throttled
request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import anyio

from lazyimage import metrics
from lazyimage.errors import UnavailableError
from lazyimage.estargz import Chunk
from lazyimage.fetch._bandwidth import TokenBucket
from lazyimage.fetch._config import ChunkStore, FetchConfig, ResidentReads
from lazyimage.fetch._coverage import Coverage
from lazyimage.fetch._delivery import Delivery
from lazyimage.fetch._flights import ABANDONED, Flight, FlightTable, member_of
from lazyimage.fetch._prefetch import Prefetcher
from lazyimage.fetch._readahead import Following, ReadAhead
from lazyimage.fetch._requests import RangeRequests
from lazyimage.fetch._scheduler import Pacer, Priority, PriorityGate
from lazyimage.fetch._source import RangeSource
from lazyimage.fetch._spans import SpanFetcher
from lazyimage.fetch._writer import CacheWriter

__all__ = ["LayerFetcher"]

_DEFAULT_CONFIG = FetchConfig()


def _describe(chunks: Sequence[Chunk]) -> str:
    first = chunks[0]
    more = f" and {len(chunks) - 1} more chunk(s)" if len(chunks) > 1 else ""
    return f"{first.path!r} at offset {first.chunk_offset}{more}"


class LayerFetcher:
    """Serves verified chunks of one layer blob. One per layer, shared by all its readers.

    The process-wide pieces are given, one of each shared by every layer of the process:
    ``gate`` orders fetches by priority, so demand on any layer holds back prefetch on every
    layer; ``bucket`` (optional) caps prefetch and background bytes; ``writer`` runs the
    cache writes that demand reads do not wait for.
    """

    def __init__(
        self,
        source: RangeSource,
        cache: ChunkStore,
        layer_digest: str,
        config: FetchConfig = _DEFAULT_CONFIG,
        bucket: TokenBucket | None = None,
        *,
        gate: PriorityGate,
        writer: CacheWriter,
    ) -> None:
        self.source = source
        self.cache = cache
        self.layer = layer_digest
        self.config = config
        self.bucket = bucket
        self._gate = gate
        self._resident = cache.read_resident if isinstance(cache, ResidentReads) else None
        self._table = FlightTable()
        self._coverage = Coverage(layer_digest, source.size)
        self._read_ahead = ReadAhead(config, self._table, cache)
        self._requests = RangeRequests(source, layer_digest, config)
        self._delivery = Delivery(
            layer_digest,
            cache,
            self._table,
            self._requests,
            self._read_ahead,
            self._coverage,
            writer,
        )
        self._spans = SpanFetcher(config, self._table, gate, self._requests, self._delivery)
        self._pacer = Pacer(gate, bucket, config.background_quiet)
        self._prefetcher = Prefetcher(
            config, cache, self._table, self._coverage, self._pacer, self._spans
        )
        # Chunk reads served from the cache, and those that had to be fetched (the agent's
        # per-image reports add these up over an image's layers).
        self.cache_hits = 0
        self.cache_misses = 0
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    @property
    def fetched_bytes(self) -> int:
        """Compressed bytes this fetcher received from its source, for any reason."""
        return self._requests.fetched

    async def read(
        self,
        chunks: Sequence[Chunk],
        priority: Priority = Priority.DEMAND,
        *,
        following: Following | None = None,
    ) -> list[bytes]:
        """The verified, uncompressed bytes of each chunk, in order.

        A demand read that cannot be served within ``demand_deadline`` raises
        UnavailableError; a chunk that fails verification twice raises VerificationError.
        Other priorities wait their turn and take their bytes from the bucket first.

        ``following`` (demand only) names the chunks after the file read: on a miss, those
        that continue the missed range in the blob go in the same request (read-ahead),
        within ``read_ahead`` bytes and the read-ahead budget (``read_ahead_ratio``).
        """
        self._check_open()
        if not chunks:
            return []
        deadline = self.config.demand_deadline if priority is Priority.DEMAND else math.inf
        found: dict[str, bytes] = {}
        with anyio.move_on_after(deadline) as scope:
            if priority is not Priority.DEMAND:
                await self._pacer.wait_turn(priority, self._prefetcher.uncached_bytes(chunks))
            await self._gather(chunks, priority, found, following)
        if scope.cancelled_caught:
            failure = self._requests.last_failure
            cause = f"; last failure: {failure}" if failure else ""
            raise UnavailableError(
                f"{_describe(chunks)} not served within {deadline:g} s{cause}",
                what=f"layer {self.layer}",
            )
        return [found[chunk.digest] for chunk in chunks]

    async def read_slice(
        self,
        chunk: Chunk,
        start: int,
        length: int,
        priority: Priority = Priority.DEMAND,
        *,
        following: Following | None = None,
    ) -> bytes:
        """Bytes ``[start, start+length)`` of one verified chunk, clipped to the chunk.

        A cache hit reads only those bytes (a 1 MiB read of a 4 MiB chunk costs 1 MiB); a
        miss fetches and verifies the whole chunk as ``read`` does.
        """
        self._check_open()
        want = max(0, min(length, chunk.size - start))
        if chunk.digest not in self._table and self.cache.contains(chunk.digest):
            # Bytes already in memory are copied here: the hop to a worker thread and back
            # costs more than the copy. Anything that might wait for the disk takes the hop.
            data = None if self._resident is None else self._resident(chunk.digest, start, want)
            if data is None:
                data = await anyio.to_thread.run_sync(self.cache.read, chunk.digest, start, want)
            if data is not None and len(data) == want:
                metrics.CACHE_HITS.labels(self.layer).inc()
                self.cache_hits += 1
                self._gate.touched(priority)
                self._coverage.add(member_of(chunk))
                if priority is Priority.DEMAND:
                    self._read_ahead.note_read([chunk])
                return data
        [whole] = await self.read([chunk], priority, following=following)
        return whole[start : start + want]

    async def prefetch(
        self, chunks: Iterable[Chunk], priority: Priority = Priority.PREFETCH
    ) -> None:
        """Fetch ``chunks`` into the cache, skipping cached ones, in ranges of up to
        ``max_range``, each after higher priorities went idle and the bucket allowed it.

        ``chunks`` may be a lazy iterable (a whole layer's): it is taken a window of
        chunks at a time, so the bookkeeping held at once stays bounded however many
        chunks there are. A range that fails does not stop the others; the first failure
        is raised at the end. ``close()`` ends a running prefetch quietly.
        """
        if priority is Priority.DEMAND:
            raise ValueError("prefetch runs at PREFETCH or BACKGROUND priority")
        self._check_open()
        await self._prefetcher.prefetch(chunks, priority)

    async def flush(self) -> None:
        """Wait until every chunk this fetcher handed to the cache writer is written."""
        await self._delivery.flush()

    def close(self) -> None:
        """Refuse new reads and end running prefetches. Reads in progress finish; cache
        writes already queued complete in the background (``flush`` waits for them).
        Metric label sets stay until ``lazyimage.metrics.forget_layer``."""
        self._closed = True
        self._prefetcher.close()

    # -- reading -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError("the layer's fetcher is closed", what=f"layer {self.layer}")

    async def _gather(
        self,
        chunks: Sequence[Chunk],
        priority: Priority,
        found: dict[str, bytes],
        following: Following | None = None,
    ) -> None:
        wanted = {chunk.digest: chunk for chunk in chunks}
        unreadable: set[str] = set()  # indexed by the cache, but its read failed
        while missing := [c for digest, c in wanted.items() if digest not in found]:
            claim = self._table.claim(missing, self.cache, unreadable)
            ahead: list[Flight] = []
            if priority is Priority.DEMAND:
                self._read_ahead.note_claim(claim)
                if claim.owned and following is not None:
                    ahead = self._read_ahead.claim_following(claim.owned, following)
                    following = None  # once per read
            if claim.hits:
                loaded = await anyio.to_thread.run_sync(self._load, claim.hits)
                self.cache_hits += len(loaded)
                found.update(loaded)
                unreadable.update(c.digest for c in claim.hits if c.digest not in loaded)
            flights = [*claim.owned, *claim.waits]
            if flights:
                metrics.CACHE_MISSES.labels(self.layer).inc(len(flights))
                self.cache_misses += len(flights)
            if claim.owned and not claim.waits:
                # The usual miss: nothing to wait for but our own fetch, so no task group.
                await self._spans.fetch([*claim.owned, *ahead], priority)
            else:
                async with anyio.create_task_group() as group:
                    if claim.owned:
                        group.start_soon(self._spans.fetch, [*claim.owned, *ahead], priority)
                    for flight in flights:
                        await flight.done.wait()
            for flight in flights:
                if flight.data is not None:
                    found[flight.chunk.digest] = flight.data
                elif flight.error is not ABANDONED and flight.error is not None:
                    raise flight.error
                # An abandoned flight is claimed again on the next round.

    def _load(self, chunks: list[Chunk]) -> dict[str, bytes]:
        """Runs in a worker thread: read cache hits (a chunk evicted meanwhile is left out)."""
        loaded: dict[str, bytes] = {}
        for chunk in chunks:
            data = self.cache.read(chunk.digest)
            if data is not None and len(data) == chunk.size:
                loaded[chunk.digest] = data
                self._coverage.add(member_of(chunk))
        if loaded:
            metrics.CACHE_HITS.labels(self.layer).inc(len(loaded))
        return loaded
