"""LayerFetcher: verified chunks of one layer, from the cache or fetched in merged ranges.

A chunk is fetched by exactly one flight, keyed by its digest (see _flights). The task that
finds a chunk neither cached nor in flight claims it; everyone else who needs it waits on
the flight. The claimer fetches the gzip members of all its chunks in merged range
requests, verifies them in worker threads, hands the bytes to the waiters, then stores them
in the cache. A claimer that is cancelled abandons its flights; their waiters claim again.

Demand reads fetch at once. Prefetch and background fill claim one span at a time, only
when no higher-priority fetch is queued or in flight (PriorityGate) and after the token
bucket allowed the span's bytes, so a reader never waits behind a throttled request.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

import anyio
import structlog

from lazyimage import metrics
from lazyimage.errors import LazyImageError, UnavailableError, VerificationError
from lazyimage.estargz import Chunk
from lazyimage.fetch._bandwidth import TokenBucket
from lazyimage.fetch._config import ChunkStore, FetchConfig, ResidentReads
from lazyimage.fetch._flights import (
    ABANDONED,
    Claim,
    Download,
    Flight,
    FlightTable,
    by_member,
    member_of,
)
from lazyimage.fetch._ranges import ByteRange, Span, merge_ranges
from lazyimage.fetch._scheduler import Priority, PriorityGate
from lazyimage.fetch._source import RangeSource
from lazyimage.fetch._verify import batches, verify_all
from lazyimage.fetch._writer import CacheWriter

__all__ = ["LayerFetcher"]

log = structlog.get_logger("lazyimage.fetch")

# Ranges of one prefetch in flight together: one downloads while the other is verified.
_PREFETCH_PARALLEL = 2
# Chunks a prefetch plans at a time: a layer's fill never holds a Chunk, a member and a
# flight for each of its (maybe 100,000) chunks at once, and a window of small files still
# makes ranges of a useful size.
_PREFETCH_WINDOW = 4096
# A source read that takes longer than stall_timeout + length / this is abandoned. A
# safety net for sources without their own stall check; RegistrySource has a finer one.
_MIN_RATE = 64 << 10
_RETRY_BASE_DELAY = 0.2
_RETRY_MAX_DELAY = 2.0

_DEFAULT_CONFIG = FetchConfig()

# A member's bytes, with the flights of the chunks it holds.
_Item = tuple[ByteRange, list[Flight], bytes]
# The chunks after the file being read, up to a limit in compressed bytes
# (lazyimage.layer.Following): read-ahead candidates for a demand miss.
Following = Callable[[int], Sequence[Chunk]]
# Read-ahead chunks fetched but not read yet are remembered by digest, at most this many;
# past it, read-ahead stops rather than let the record grow.
_MAX_UNREAD = 1024
_READ_AHEAD_REASON = "readahead"  # the fetched_bytes reason of read-ahead
# Members up to this many compressed bytes in all are verified on the event loop: at most
# about 0.3 ms of inflate and sha256, less than handing them to a worker thread and back.
_INLINE_VERIFY = 64 << 10
_INLINE_VERIFY_OUTPUT = 256 << 10  # and inflate to at most this many (no gzip bomb inline)


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
        self._writer = writer
        self._resident = cache.read_resident if isinstance(cache, ResidentReads) else None
        self._table = FlightTable()
        self._lock = threading.Lock()  # for state that writer threads touch too
        self._writes: set[Future[None]] = set()
        self._covered: set[int] = set()
        self._covered_bytes = 0
        self._requests: anyio.Semaphore | None = None
        self._fetched = 0
        # Chunk reads served from the cache, and those that had to be fetched (the agent's
        # per-image reports add these up over an image's layers).
        self.cache_hits = 0
        self.cache_misses = 0
        self._last_failure = ""
        self._prefetches: set[anyio.CancelScope] = set()
        self._background_since: float | None = None  # when background fill first asked
        # Read-ahead accounting, in compressed bytes: what readers asked for that had to be
        # fetched, read-ahead chunks no reader asked for yet (by digest), and read-ahead
        # bytes lost (fetched, then refused or fetched again).
        self._demanded = 0
        self._unread: dict[str, int] = {}
        self._unread_bytes = 0
        self._wasted = 0
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    @property
    def fetched_bytes(self) -> int:
        """Compressed bytes this fetcher received from its source, for any reason."""
        return self._fetched

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
                await self._wait_turn(priority, self._uncached_bytes(chunks))
            await self._gather(chunks, priority, found, following)
        if scope.cancelled_caught:
            cause = f"; last failure: {self._last_failure}" if self._last_failure else ""
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
                self._cover(member_of(chunk))
                if priority is Priority.DEMAND and self._unread:
                    self._note_read([chunk])
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
        longest = (
            self.config.background_range
            if priority is Priority.BACKGROUND
            else self.config.max_range
        )
        failures: list[LazyImageError] = []
        with anyio.CancelScope() as scope:
            self._prefetches.add(scope)
            try:
                async with anyio.create_task_group() as group:
                    slots = anyio.Semaphore(_PREFETCH_PARALLEL)
                    for window in _windows(chunks, _PREFETCH_WINDOW):
                        members: dict[ByteRange, list[Chunk]] = {}
                        for chunk in self._wanted(window):
                            members.setdefault(member_of(chunk), []).append(chunk)
                        gap = self.config.merge_gap
                        for span in merge_ranges(members, max_gap=gap, max_size=longest):
                            await slots.acquire()
                            claimed = await self._claim_span(span, members, priority)
                            if not claimed:
                                slots.release()
                                continue
                            group.start_soon(
                                self._prefetch_span, claimed, priority, slots, failures
                            )
            finally:
                self._prefetches.discard(scope)
        if failures and not self._closed:
            raise failures[0]

    async def flush(self) -> None:
        """Wait until every chunk this fetcher handed to the cache writer is written."""
        with self._lock:
            pending = list(self._writes)
        if pending:
            await anyio.to_thread.run_sync(wait_futures, pending)

    def close(self) -> None:
        """Refuse new reads and end running prefetches. Reads in progress finish; cache
        writes already queued complete in the background (``flush`` waits for them).
        Metric label sets stay until ``lazyimage.metrics.forget_layer``."""
        self._closed = True
        for scope in list(self._prefetches):
            scope.cancel()

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
                self._note_claim(claim)
                if claim.owned and following is not None:
                    ahead = self._claim_following(claim.owned, following)
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
                await self._fetch([*claim.owned, *ahead], priority)
            else:
                async with anyio.create_task_group() as group:
                    if claim.owned:
                        group.start_soon(self._fetch, [*claim.owned, *ahead], priority)
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
                self._cover(member_of(chunk))
        if loaded:
            metrics.CACHE_HITS.labels(self.layer).inc(len(loaded))
        return loaded

    def _wanted(self, chunks: Iterable[Chunk]) -> list[Chunk]:
        """One chunk per digest, among those neither cached nor in flight."""
        seen: dict[str, Chunk] = {}
        for chunk in chunks:
            if chunk.digest in seen or chunk.digest in self._table:
                continue
            if self.cache.contains(chunk.digest):
                self._cover(member_of(chunk))
                continue
            seen[chunk.digest] = chunk
        return list(seen.values())

    def _uncached_bytes(self, chunks: Sequence[Chunk]) -> int:
        return sum(member.length for member in {member_of(c) for c in self._wanted(chunks)})

    # -- read-ahead --------------------------------------------------------------------------
    #
    # A demand miss takes along the chunks that follow it in the blob (the next files of the
    # same directory), in the same range request: one round trip instead of several when the
    # reader goes on to those files, as imports of one package do. What no reader asks for
    # is waste, so read-ahead spends a budget: read-ahead bytes not read yet, plus those
    # lost, stay within ``read_ahead_ratio`` of the bytes readers asked for that were
    # fetched. The registry then serves at most (1 + ratio) x what the readers read.

    def _read_ahead_credit(self) -> int:
        spent = self._unread_bytes + self._wasted
        return int(self.config.read_ahead_ratio * self._demanded) - spent

    def _note_read(self, chunks: Iterable[Chunk]) -> None:
        """Readers asked for these chunks: read-ahead among them is no longer waste."""
        for chunk in chunks:
            size = self._unread.pop(chunk.digest, None)
            if size is not None:
                self._unread_bytes -= size
                self._demanded += size

    def _note_claim(self, claim: Claim) -> None:
        """Count a demand claim: members to fetch for readers, read-ahead now read."""
        self._note_read(claim.hits)
        self._note_read(flight.chunk for flight in claim.waits)
        for flight in claim.owned:
            size = self._unread.pop(flight.chunk.digest, None)
            if size is not None:  # fetched ahead, then lost (evicted or refused): again
                self._unread_bytes -= size
                self._wasted += size
        self._demanded += sum(member.length for member in by_member(claim.owned))

    def _claim_following(self, owned: list[Flight], following: Following) -> list[Flight]:
        """Claim the chunks that continue the missed range in the blob, within the window
        and the budget; none if the read-ahead record is full."""
        start = min(flight.member.offset for flight in owned)
        end = max(flight.member.end for flight in owned)
        # The whole range stays within read_ahead; what is added, within the budget.
        limit = min(self.config.read_ahead - (end - start), self._read_ahead_credit())
        if limit <= 0 or len(self._unread) >= _MAX_UNREAD:
            return []
        taken: list[Chunk] = []
        spent = 0
        for chunk in following(limit):
            size = chunk.end - chunk.offset
            if (
                chunk.offset != end  # a gap: not in the same range
                or spent + size > limit
                or chunk.digest in self._table
                or chunk.digest in self._unread
                or self.cache.contains(chunk.digest)
            ):
                break
            taken.append(chunk)
            spent += size
            end = chunk.end
        if not taken:
            return []
        claim = self._table.claim(taken, self.cache)
        for flight in claim.owned:
            flight.ahead = True
            size = flight.member.length
            self._unread[flight.chunk.digest] = size
            self._unread_bytes += size
        return claim.owned

    # -- scheduling --------------------------------------------------------------------------

    async def _wait_turn(self, priority: Priority, size: int) -> None:
        """Let higher priorities go first, then take ``size`` bytes from the bucket."""
        gate = self._gate
        quiet, since = 0.0, -math.inf
        if priority is Priority.BACKGROUND:
            if self._background_since is None:
                self._background_since = anyio.current_time()
            quiet, since = self.config.background_quiet, self._background_since
        await gate.wait_turn(priority, quiet, since)
        if self.bucket is not None and size:
            await self.bucket.take(size)
            # Demand may have arrived while the bucket refilled.
            await gate.wait_turn(priority, quiet, since)

    async def _claim_span(
        self, span: Span, members: dict[ByteRange, list[Chunk]], priority: Priority
    ) -> list[Flight]:
        """Wait for this span's turn, then claim what of it is still needed."""
        needed = [part for part in span.parts if self._needs(members[part])]
        if not needed:
            return []
        await self._wait_turn(priority, max(p.end for p in needed) - needed[0].offset)
        claim = self._table.claim((c for p in needed for c in members[p]), self.cache)
        for chunk in claim.hits:
            self._cover(member_of(chunk))
        return claim.owned

    def _needs(self, chunks: list[Chunk]) -> bool:
        return any(
            c.digest not in self._table and not self.cache.contains(c.digest) for c in chunks
        )

    async def _prefetch_span(
        self,
        flights: list[Flight],
        priority: Priority,
        slots: anyio.Semaphore,
        failures: list[LazyImageError],
    ) -> None:
        try:
            await self._fetch(flights, priority)
        finally:
            slots.release()
        failures.extend(f.error for f in flights if isinstance(f.error, LazyImageError))

    # -- fetching ----------------------------------------------------------------------------

    async def _fetch(self, flights: list[Flight], priority: Priority) -> None:
        """Fetch claimed flights. Never raises LazyImageError: outcomes go to the flights.

        Members already being downloaded for other chunks are taken from that download;
        the rest go in merged spans, all at once.
        """
        try:
            members = by_member(flights)
            joined = {m: (d, fs) for m, fs in members.items() if (d := self._table.download_of(m))}
            own = {m: fs for m, fs in members.items() if m not in joined}
            spans = merge_ranges(own, max_gap=self.config.merge_gap, max_size=self.config.max_range)
            with self._gate.active(priority):
                if len(spans) == 1 and not joined:  # a demand miss, usually: no task group
                    [span] = spans
                    parts = {part: own[part] for part in span.parts}
                    downloads = self._table.start_downloads(parts)
                    await self._fetch_span(span.range, parts, downloads, priority)
                    return
                async with anyio.create_task_group() as group:
                    for member, (download, waiting) in joined.items():
                        group.start_soon(self._join, member, download, waiting, priority)
                    for span in spans:
                        parts = {part: own[part] for part in span.parts}
                        # Started now, not when the task runs, so claims in between see them.
                        downloads = self._table.start_downloads(parts)
                        group.start_soon(self._fetch_span, span.range, parts, downloads, priority)
        finally:
            self._table.abandon(flights)

    async def _fetch_span(
        self,
        span: ByteRange,
        parts: dict[ByteRange, list[Flight]],
        downloads: dict[ByteRange, Download],
        priority: Priority,
    ) -> None:
        """One range request for ``parts``; share each member's bytes with those who
        joined its download; then verify, deliver and store the chunks."""
        ahead = sum(m.length for m, flights in parts.items() if all(f.ahead for f in flights))
        try:
            data = await self._download(span, priority, ahead)
        except LazyImageError as exc:
            self._table.end_downloads(downloads, error=exc)
            for flights in parts.values():
                for flight in flights:
                    self._table.fail(flight, exc)
            return
        except BaseException:
            self._table.end_downloads(downloads, error=ABANDONED)
            raise
        pieces = {m: data[m.offset - span.offset : m.end - span.offset] for m in parts}
        self._table.end_downloads(downloads, pieces=pieces)
        await self._deliver([(m, flights, pieces[m]) for m, flights in parts.items()], priority)

    async def _join(
        self, member: ByteRange, download: Download, flights: list[Flight], priority: Priority
    ) -> None:
        """Verify our chunks from a member that another flight is downloading."""
        await download.done.wait()
        if download.data is not None:
            await self._deliver([(member, flights, download.data)], priority)
        elif download.error is ABANDONED:
            parts = {member: flights}
            downloads = self._table.start_downloads(parts)
            await self._fetch_span(member, parts, downloads, priority)
        else:
            for flight in flights:
                self._table.fail(flight, download.error or ABANDONED)

    async def _download(self, span: ByteRange, priority: Priority, ahead: int = 0) -> bytes:
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
                self._last_failure = str(exc)
                # Capped exponential backoff, jittered so that layers do not retry in step.
                delay = min(_RETRY_MAX_DELAY, _RETRY_BASE_DELAY * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                elapsed = anyio.current_time() - started
                if elapsed + delay >= self.config.demand_deadline:
                    raise UnavailableError(
                        f"gave up after {attempt} attempts in {elapsed:.1f} s: {exc}",
                        what=f"layer {self.layer}, range {span.offset}-{span.end - 1}",
                    ) from exc
                metrics.FETCH_RETRIES.labels(self.layer).inc()
                log.debug("fetch.retry", layer=self.layer, delay=round(delay, 3), error=str(exc))
                await anyio.sleep(delay)

    async def _request(self, span: ByteRange, priority: Priority, ahead: int = 0) -> bytes:
        if self._requests is None:
            self._requests = anyio.Semaphore(self.config.max_requests)
        limit = self.config.stall_timeout + span.length / _MIN_RATE
        async with self._requests:
            metrics.FETCH_IN_FLIGHT.inc()
            started = anyio.current_time()
            try:
                with anyio.move_on_after(limit) as watchdog:
                    data = await self.source.read(span.offset, span.length)
            finally:
                metrics.FETCH_IN_FLIGHT.dec()
                elapsed = anyio.current_time() - started
                metrics.FETCH_DURATION.labels(priority.reason).observe(elapsed)
        what = f"layer {self.layer}, range {span.offset}-{span.end - 1}"
        if watchdog.cancelled_caught:
            raise UnavailableError(f"no answer within {limit:.1f} s", what=what)
        if len(data) != span.length:
            raise UnavailableError(f"got {len(data)} of {span.length} bytes", what=what)
        metrics.FETCHED_BYTES.labels(self.layer, priority.reason).inc(len(data) - ahead)
        if ahead:
            metrics.FETCHED_BYTES.labels(self.layer, _READ_AHEAD_REASON).inc(ahead)
        self._fetched += len(data)
        return data

    # -- verifying and storing ---------------------------------------------------------------

    async def _deliver(self, items: list[_Item], priority: Priority) -> None:
        """Verify chunks from their members' bytes, in batches on worker threads. A member
        with a chunk that fails is fetched again, once, on its own."""
        failed: list[tuple[ByteRange, list[Flight]]] = []
        groups = batches(items)
        if len(groups) == 1:
            await self._verify_batch(groups[0], priority, failed, False)
        else:
            async with anyio.create_task_group() as group:
                for batch in groups:
                    group.start_soon(self._verify_batch, batch, priority, failed, False)
        for member, flights in failed:
            try:
                again = await self._download(member, priority)
            except LazyImageError as exc:
                for flight in flights:
                    self._table.fail(flight, exc)
                continue
            await self._verify_batch([(member, flights, again)], priority, [], True)

    async def _verify_batch(
        self,
        items: list[_Item],
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
                self._cover(member)
            if bad and not last_try:
                failed.append((member, bad))
        if verified:
            await self._store(verified, priority)

    def _read_ahead_refused(self, flight: Flight, exc: LazyImageError) -> None:
        """A read-ahead chunk failed verification: not cached, not fetched again now. A
        reader that asks for it later fetches it as its own, with the usual retry."""
        chunk = flight.chunk
        metrics.VERIFICATION_FAILURES.labels(self.layer).inc()
        log.warning(
            "fetch.chunk_verification_failed",
            refetch=False,
            read_ahead=True,
            layer=self.layer,
            path=chunk.path,
            offset=chunk.chunk_offset,
            blob_range=f"{chunk.offset}-{chunk.end - 1}",
            error=str(exc),
        )
        size = self._unread.pop(chunk.digest, None)
        if size is not None:
            self._unread_bytes -= size
            self._wasted += size
        self._table.fail(flight, ABANDONED)

    def _verification_failed(self, flight: Flight, exc: LazyImageError, last_try: bool) -> None:
        chunk = flight.chunk
        metrics.VERIFICATION_FAILURES.labels(self.layer).inc()
        fields = {
            "layer": self.layer,
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
            f"layer {self.layer}: chunk of {chunk.path!r} at offset {chunk.chunk_offset} "
            f"(blob bytes {chunk.offset}-{chunk.end - 1}) failed verification twice: {exc}"
        )
        error.__cause__ = exc
        self._table.fail(flight, error)

    async def _store(self, flights: list[Flight], priority: Priority) -> None:
        """Put verified chunks in the cache, in one worker-thread call. Demand reads do not
        wait for the writes unless the writer is behind; prefetch always waits, which paces
        it to the disk."""

        def put() -> None:
            for flight in flights:
                try:
                    assert flight.data is not None
                    self.cache.put(flight.chunk.digest, flight.data)
                except Exception:
                    log.exception("fetch.cache_put_failed", layer=self.layer)
                finally:
                    self._table.forget(flight)

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

    def _cover(self, member: ByteRange) -> None:
        """Count a member as fetched or cached, for the layer's fetched ratio."""
        with self._lock:
            if member.offset in self._covered:
                return
            self._covered.add(member.offset)
            self._covered_bytes += member.length
            covered = self._covered_bytes
        if self.source.size > 0:
            ratio = min(1.0, covered / self.source.size)
            metrics.LAYER_FETCHED_RATIO.labels(self.layer).set(ratio)
