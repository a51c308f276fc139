"""LayerFetcher over an in-memory source: single flight, merging, verification, retries,
priorities and the cache, counted at the source. Its deadlines, stall timeout and bandwidth
cap are in test_fetcher_timing, on a virtual clock."""

from __future__ import annotations

import dataclasses
import itertools
import math
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import trio.testing
from lazyimage.cache import ChunkCache
from lazyimage.errors import UnavailableError, VerificationError
from lazyimage.estargz import Chunk
from lazyimage.fetch import CacheWriter, FetchConfig, LayerFetcher, Priority, PriorityGate

from tests.unit.fetch.helpers import (
    Blob,
    DictCache,
    MemorySource,
    gzip_member,
    layer_digest,
    make_blob,
    sample,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KiB = 1 << 10
MiB = 1 << 20


def fetcher(
    blob: Blob,
    cache: DictCache | ChunkCache | None = None,
    config: FetchConfig | None = None,
    **source_options: object,
) -> tuple[LayerFetcher, MemorySource]:
    source = MemorySource(blob.data, **source_options)  # type: ignore[arg-type]
    return (
        LayerFetcher(
            source,
            cache if cache is not None else DictCache(),
            layer_digest(),
            config or FetchConfig(),
            gate=PriorityGate(),
            writer=CacheWriter(),
        ),
        source,
    )


def member_ranges(blob: Blob) -> set[tuple[int, int]]:
    return {(c.offset, c.end - c.offset) for c in blob.chunks}


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_read_returns_verified_bytes_in_order() -> None:
    blob = make_blob([1000, 20_000, 3])
    fetch, _ = fetcher(blob)
    chunks = [blob.chunks[2], blob.chunks[0], blob.chunks[2], blob.chunks[1]]
    assert await fetch.read(chunks) == [blob.contents[i] for i in (2, 0, 2, 1)]
    assert await fetch.read([]) == []


async def test_adjacent_chunks_are_one_request() -> None:
    blob = make_blob([5000] * 8)
    fetch, source = fetcher(blob)
    await fetch.read(blob.chunks)
    first, last = blob.chunks[0], blob.chunks[-1]
    assert source.reads == [(first.offset, last.end - first.offset)]
    assert fetch.fetched_bytes == last.end - first.offset


async def test_small_gaps_are_bridged_large_gaps_split() -> None:
    near = make_blob([5000] * 4, gap=1000)
    fetch, source = fetcher(near, config=FetchConfig(merge_gap=4 * KiB))
    await fetch.read(near.chunks)
    assert len(source.reads) == 1
    far = make_blob([5000] * 4, gap=100 * KiB)
    fetch, source = fetcher(far, config=FetchConfig(merge_gap=4 * KiB))
    await fetch.read(far.chunks)
    assert sorted(source.reads) == sorted(member_ranges(far))


async def test_merged_ranges_stay_under_max_range() -> None:
    blob = make_blob([200 * KiB] * 10, seed=3)
    fetch, source = fetcher(blob, config=FetchConfig(max_range=450 * KiB))
    assert await fetch.read(blob.chunks) == blob.contents
    assert len(source.reads) > 1
    assert all(length <= 450 * KiB for _, length in source.reads)
    assert source.bytes_read == sum(c.end - c.offset for c in blob.chunks)


async def test_chunks_sharing_a_member_fetch_it_once() -> None:
    blob = make_blob([3000, 4000, 5000], per_member=3)
    assert len({c.offset for c in blob.chunks}) == 1
    assert [c.inner_offset for c in blob.chunks] == [0, 3000, 7000]
    fetch, source = fetcher(blob, delay=0.05)
    results: dict[int, bytes] = {}

    async def one(index: int) -> None:
        results[index] = (await fetch.read([blob.chunks[index]]))[0]

    async with anyio.create_task_group() as group:
        group.start_soon(fetch.read, blob.chunks)
        for index in range(3):
            group.start_soon(one, index)
    assert [results[i] for i in range(3)] == blob.contents
    assert len(source.reads) == 1


async def test_32_concurrent_readers_fetch_each_chunk_once() -> None:
    blob = make_blob([30 * KiB] * 40, seed=5)
    fetch, source = fetcher(blob, delay=0.02)
    chunks = blob.chunks

    async def reader(n: int) -> None:
        window = chunks[n : n + 9]  # overlapping windows
        assert await fetch.read(window) == blob.contents[n : n + 9]

    async with anyio.create_task_group() as group:
        for n in range(32):
            group.start_soon(reader, n)
    fetched = sorted(source.reads)
    # No byte of the blob was read twice, and every member was read.
    for (a, la), (b, _) in itertools.pairwise(fetched):
        assert a + la <= b
    assert source.bytes_read == sum(c.end - c.offset for c in chunks)


async def test_cache_hits_make_no_request(tmp_path: Path) -> None:
    blob = make_blob([10_000, 20_000])
    cache = DictCache()
    fetch, source = fetcher(blob, cache)
    await fetch.read(blob.chunks)
    await fetch.flush()
    assert sorted(cache.chunks) == sorted(c.digest for c in blob.chunks)
    reads = len(source.reads)
    assert await fetch.read(blob.chunks) == blob.contents
    assert len(source.reads) == reads
    assert sample("lazyimage_cache_hits_total", layer=fetch.layer) == 2
    assert sample("lazyimage_cache_misses_total", layer=fetch.layer) == 2
    # Another fetcher on the same cache (another layer with the same chunks) fetches nothing.
    other, other_source = fetcher(blob, cache)
    assert await other.read(blob.chunks) == blob.contents
    assert other_source.reads == [] and other.fetched_bytes == 0


async def test_real_cache_survives_a_new_fetcher(tmp_path: Path) -> None:
    blob = make_blob([100 * KiB, 300 * KiB, 5], seed=9)
    with ChunkCache(tmp_path / "cache", 64 * MiB) as cache:
        fetch, _ = fetcher(blob, cache)
        assert await fetch.read(blob.chunks) == blob.contents
        await fetch.flush()
        fetch.close()
    with ChunkCache(tmp_path / "cache", 64 * MiB) as cache:
        again, source = fetcher(blob, cache)
        assert await again.read(blob.chunks) == blob.contents
        assert source.reads == [] and again.fetched_bytes == 0


async def test_a_full_cache_does_not_fail_reads() -> None:
    blob = make_blob([10_000])
    cache = DictCache(full=True)
    fetch, source = fetcher(blob, cache)
    assert await fetch.read(blob.chunks) == blob.contents
    await fetch.flush()
    assert await fetch.read(blob.chunks) == blob.contents
    assert len(source.reads) == 2 and cache.chunks == {}


def forge(blob: Blob, index: int) -> Blob:
    """Replace chunk ``index``'s member with a valid gzip member of other content."""
    chunk = blob.chunks[index]
    fake = gzip_member(b"X" * chunk.size)
    data = blob.data[: chunk.offset] + fake + blob.data[chunk.end :]
    shift = len(fake) - (chunk.end - chunk.offset)
    chunks = [
        c
        if c.offset < chunk.offset
        else dataclasses.replace(
            c, offset=c.offset + (shift if c.offset > chunk.offset else 0), end=c.end + shift
        )
        for c in blob.chunks
    ]
    return Blob(data, chunks, blob.contents)


async def test_a_forged_chunk_is_refetched_once_then_refused() -> None:
    blob = forge(make_blob([4000, 5000, 6000], seed=2), 1)
    cache = DictCache()
    fetch, source = fetcher(blob, cache)
    bad = blob.chunks[1]
    with pytest.raises(VerificationError) as caught:
        await fetch.read(blob.chunks)
    message = str(caught.value)
    assert fetch.layer in message and "file1" in message and "offset 0" in message
    assert sample("lazyimage_chunk_verification_failures_total", layer=fetch.layer) == 2
    # One merged request, then the bad member alone.
    assert source.reads[-1] == (bad.offset, bad.end - bad.offset)
    assert len(source.reads) == 2
    await fetch.flush()
    assert bad.digest not in cache.chunks
    # The good chunks were verified, served and cached all the same.
    assert await fetch.read([blob.chunks[0], blob.chunks[2]]) == [
        blob.contents[0],
        blob.contents[2],
    ]
    assert len(source.reads) == 2


async def test_concurrent_readers_of_a_forged_chunk_all_fail() -> None:
    blob = forge(make_blob([4000]), 0)
    fetch, source = fetcher(blob, delay=0.02)
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await fetch.read(blob.chunks)
        except VerificationError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(reader)
    assert len(errors) == 5 and len(source.reads) == 2


async def test_a_failed_request_is_not_retried_by_the_fetcher() -> None:
    # The source retries, until the deadline the fetcher gives it; the fetcher does not add
    # a loop of its own around that.
    blob = make_blob([10_000])
    fetch, source = fetcher(blob, fail_next=1)
    with pytest.raises(UnavailableError, match="injected failure"):
        await fetch.read(blob.chunks)
    assert len(source.reads) == 1
    # The next read asks again.
    assert await fetch.read(blob.chunks) == blob.contents
    assert len(source.reads) == 2


async def test_each_request_carries_the_demand_deadline() -> None:
    blob = make_blob([10_000])
    fetch, source = fetcher(blob)
    asked = anyio.current_time()
    assert await fetch.read(blob.chunks) == blob.contents
    (deadline,) = source.deadlines
    assert deadline is not None
    assert asked + fetch.config.demand_deadline <= deadline <= anyio.current_time() + 30


async def test_a_cancelled_reader_does_not_strand_the_others() -> None:
    blob = make_blob([10_000])
    fetch, source = fetcher(blob, delay=0.2)
    got: list[bytes] = []

    async def patient() -> None:
        await anyio.sleep(0.05)  # joins the first reader's flight
        got.extend(await fetch.read(blob.chunks))

    async with anyio.create_task_group() as group:
        with anyio.move_on_after(0.1):
            group.start_soon(patient)
            await fetch.read(blob.chunks)  # cancelled while its request runs
    assert got == blob.contents
    assert len(source.reads) == 2


async def test_prefetch_fills_the_cache_in_large_ranges() -> None:
    blob = make_blob([100 * KiB] * 30, seed=4)
    cache = DictCache()
    fetch, source = fetcher(blob, cache, FetchConfig(max_range=1 * MiB))
    await fetch.read(blob.chunks[:2])
    await fetch.flush()
    source.reads.clear()
    await fetch.prefetch(blob.chunks)
    assert set(cache.chunks) == {c.digest for c in blob.chunks}
    # Cached chunks were skipped, the rest came in a few ranges of at most max_range.
    assert blob.chunks[0].offset not in {offset for offset, _ in source.reads}
    assert all(length <= MiB for _, length in source.reads)
    assert len(source.reads) <= 5
    assert source.bytes_read == sum(c.end - c.offset for c in blob.chunks[2:])
    assert sample("lazyimage_fetched_bytes_total", layer=fetch.layer, reason="prefetch") == (
        source.bytes_read
    )
    ratio = sample("lazyimage_layer_fetched_ratio", layer=fetch.layer)
    assert ratio == pytest.approx((blob.chunks[-1].end - blob.chunks[0].offset) / len(blob.data))
    await fetch.prefetch(blob.chunks)  # all cached: nothing to do
    assert source.bytes_read == sum(c.end - c.offset for c in blob.chunks[2:])


async def test_prefetch_takes_a_lazy_iterable_a_window_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lazyimage.fetch import _prefetch

    monkeypatch.setattr(_prefetch, "_PREFETCH_WINDOW", 4)
    # 30 small files, three to a gzip member: windows never split a member.
    blob = make_blob([2 * KiB] * 30, per_member=3, seed=9)
    cache = DictCache()
    fetch, source = fetcher(blob, cache)
    taken: list[int] = []
    fetched_when_taken: list[int] = []

    def lazily() -> Iterator[Chunk]:
        for index, chunk in enumerate(blob.chunks):
            taken.append(index)
            fetched_when_taken.append(source.bytes_read)
            yield chunk

    await fetch.prefetch(lazily(), Priority.BACKGROUND)
    assert set(cache.chunks) == {c.digest for c in blob.chunks}
    assert taken == list(range(30))
    assert fetched_when_taken[-1] > 0  # the last chunks were taken after fetches began
    # Each member came in one range, never split between two windows.
    members = member_ranges(blob)
    assert all(
        any(
            offset <= m_offset and m_offset + m_length <= offset + length
            for offset, length in source.reads
        )
        for m_offset, m_length in members
    )
    assert source.bytes_read == sum(length for _, length in members)


class HeldSource(MemorySource):
    """Holds each read until the test lets it go, so events happen in the test's order
    whatever the clock says. ``held[i]`` releases ``reads[i]``; after ``open()`` nothing
    is held."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.held: list[anyio.Event] = []
        self._open = False

    async def read(self, offset: int, length: int, *, deadline: float | None = None) -> bytes:
        self.reads.append((offset, length))
        released = anyio.Event()
        self.held.append(released)
        if not self._open:
            await released.wait()
        return self.data[offset : offset + length]

    def open(self) -> None:
        self._open = True
        for released in self.held:
            released.set()


class WatchedGate(PriorityGate):
    """The real gate, counting the callers waiting in it for their turn."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def wait_turn(
        self, priority: Priority, quiet: float = 0.0, since: float = -math.inf
    ) -> None:
        self.waiting += 1
        try:
            await super().wait_turn(priority, quiet, since)
        finally:
            self.waiting -= 1


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await anyio.sleep(0.001)


async def test_prefetch_gives_way_to_demand() -> None:
    blob = make_blob([64 * KiB] * 40, seed=6)
    source, gate, cache = HeldSource(blob.data), WatchedGate(), DictCache()
    fetch = LayerFetcher(
        source,
        cache,
        layer_digest(),
        FetchConfig(prefetch_range=128 * KiB),
        gate=gate,
        writer=CacheWriter(),
    )
    last = blob.chunks[-1]
    demanded: list[bytes] = []
    parallel = 4  # the prefetch's ranges in flight together

    async def demand() -> None:
        demanded.extend(await fetch.read([last]))

    async with anyio.create_task_group() as group:
        group.start_soon(fetch.prefetch, blob.chunks)
        await wait_until(lambda: len(source.reads) == parallel)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.reads) == parallel  # and no more
        group.start_soon(demand)
        # The demand's own request went out at once, beside the prefetch's.
        await wait_until(lambda: len(source.reads) == parallel + 1)
        assert source.reads[parallel] == (last.offset, last.end - last.offset)
        # The prefetch's ranges end; its next one waits for the demand instead of going out.
        for held in source.held[:parallel]:
            held.set()
        await wait_until(lambda: gate.waiting > 0 or len(source.reads) > parallel + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.reads) == parallel + 1 and gate.waiting == 1
        assert demanded == []
        # The demand is served, then the prefetch goes on with the rest.
        source.held[parallel].set()
        await wait_until(lambda: bool(demanded))
        source.open()
    assert demanded == [blob.contents[-1]]
    assert set(cache.chunks) == {c.digest for c in blob.chunks}
    assert len(source.reads) > parallel + 2
    assert source.bytes_read == last.end - blob.chunks[0].offset  # nothing fetched twice


async def test_demand_on_one_layer_holds_back_prefetch_on_another_sharing_the_gate() -> None:
    demanded, prefetched = make_blob([64 * KiB] * 2, seed=10), make_blob([64 * KiB] * 8, seed=11)
    gate, writer, config = WatchedGate(), CacheWriter(), FetchConfig(max_range=64 * KiB)
    reader_source, filler_source = HeldSource(demanded.data), HeldSource(prefetched.data)
    reader = LayerFetcher(
        reader_source, DictCache(), layer_digest(), config, gate=gate, writer=writer
    )
    filler_cache = DictCache()
    filler = LayerFetcher(
        filler_source, filler_cache, layer_digest(), config, gate=gate, writer=writer
    )
    served: list[bytes] = []

    async def demand() -> None:
        served.extend(await reader.read(demanded.chunks[:1]))

    async with anyio.create_task_group() as group:
        group.start_soon(demand)
        await wait_until(lambda: len(reader_source.reads) == 1)
        group.start_soon(filler.prefetch, prefetched.chunks)
        # The other layer's prefetch waits in the shared gate, not one request sent.
        await wait_until(lambda: gate.waiting > 0 or bool(filler_source.reads))
        await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 1 and filler_source.reads == []
        reader_source.open()
        await wait_until(lambda: bool(served))
        filler_source.open()
    assert served == demanded.contents[:1]
    assert set(filler_cache.chunks) == {c.digest for c in prefetched.chunks}


@pytest.mark.parametrize(
    ("bulk_prefetch", "longest", "in_flight"),
    [(100 * MiB, 128 * KiB, 4), (1 * MiB, 512 * KiB, 2)],
    ids=["a zone: short ranges, 4 at once", "a large working set: long ranges, 2 at once"],
)
async def test_prefetch_ranges_follow_the_size_of_what_it_fetches(
    bulk_prefetch: int, longest: int, in_flight: int
) -> None:
    blob = make_blob([64 * KiB] * 40, seed=13)  # about 2.5 MiB
    source = HeldSource(blob.data)
    config = FetchConfig(prefetch_range=128 * KiB, max_range=512 * KiB, bulk_prefetch=bulk_prefetch)
    fetch = LayerFetcher(
        source, DictCache(), layer_digest(), config, gate=PriorityGate(), writer=CacheWriter()
    )
    async with anyio.create_task_group() as group:
        group.start_soon(fetch.prefetch, blob.chunks)
        await wait_until(lambda: len(source.reads) == in_flight)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.reads) == in_flight  # and no more until one ends
        source.open()
    assert max(length for _, length in source.reads) <= longest
    assert max(length for _, length in source.reads) > longest // 2  # merged up to it
    assert source.bytes_read == blob.chunks[-1].end - blob.chunks[0].offset


async def test_close_ends_prefetch_and_refuses_reads() -> None:
    blob = make_blob([64 * KiB] * 20, seed=7)
    fetch, source = fetcher(blob, config=FetchConfig(prefetch_range=64 * KiB), delay=0.05)
    async with anyio.create_task_group() as group:
        group.start_soon(fetch.prefetch, blob.chunks)
        await anyio.sleep(0.12)
        fetch.close()
        at_close = len(source.reads)
    assert at_close < 20  # the prefetch ended before it was through
    await anyio.sleep(0.2)
    assert len(source.reads) == at_close
    with pytest.raises(UnavailableError, match="closed"):
        await fetch.read(blob.chunks[:1])
    with pytest.raises(ValueError):
        await fetch.prefetch(blob.chunks, Priority.DEMAND)


async def test_read_slice_reads_only_the_slice_of_a_cached_chunk() -> None:
    blob = make_blob([300_000])
    cache = DictCache()
    fetch, source = fetcher(blob, cache)
    chunk = blob.chunks[0]
    # A miss fetches and verifies the whole chunk, and returns the slice.
    assert await fetch.read_slice(chunk, 1000, 500) == blob.contents[0][1000:1500]
    await fetch.flush()
    reads = len(source.reads)
    slices: list[tuple[int, int | None]] = []
    original = cache.read

    def spy(digest: str, offset: int = 0, length: int | None = None) -> bytes | None:
        slices.append((offset, length))
        return original(digest, offset, length)

    cache.read = spy  # type: ignore[method-assign]
    assert await fetch.read_slice(chunk, 250_000, 100_000) == blob.contents[0][250_000:]
    assert slices == [(250_000, 50_000)]  # clipped to the chunk, and only that part read
    assert len(source.reads) == reads


@dataclasses.dataclass
class DigestCache(DictCache):
    """Keeps what it was given only as digests, so the chunks' bytes are the fetcher's."""

    def put(self, digest: str, data: bytes) -> bool:
        self.puts.append(digest)
        self.chunks[digest] = b""
        return True


async def test_prefetch_holds_one_batch_of_inflated_bytes_not_its_span() -> None:
    # A priority zone is one span of tens of MB that inflates to more: its chunks' bytes are
    # dropped once stored, not kept until the span ends (the agent's peak memory).
    blob = make_blob([256 * KiB] * 48, seed=12)
    assert len(blob.data) < 16 * MiB  # one span
    cache = DigestCache()
    fetch, source = fetcher(blob, cache, FetchConfig(prefetch_range=16 * MiB))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await fetch.prefetch(blob.chunks)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(cache.puts) == 48 and len(source.reads) == 1
    # The span's compressed bytes (12 MiB) and a batch or two inflated, where holding
    # every chunk until the end would add their 12 MiB.
    assert peak < len(blob.data) + 4 * MiB, peak / MiB


async def test_prefetch_returns_once_chunks_others_fetch_are_in() -> None:
    # A prewarm's prefetch of a zone that the layer's mount is prefetching already: it must
    # not report the zone ready while those bytes are still on their way.
    blob = make_blob([64 * KiB] * 4, seed=9)
    source, cache = HeldSource(blob.data), DictCache()
    fetch = LayerFetcher(
        source, cache, layer_digest(), FetchConfig(), gate=PriorityGate(), writer=CacheWriter()
    )
    prefetched = anyio.Event()

    async def prefetch() -> None:
        await fetch.prefetch(blob.chunks)
        prefetched.set()

    async with anyio.create_task_group() as group:
        group.start_soon(fetch.prefetch, blob.chunks[:2])  # the mount's, in flight
        await wait_until(lambda: len(source.reads) == 1)
        group.start_soon(prefetch)
        await wait_until(lambda: len(source.reads) == 2)  # it asks for the rest only
        assert source.reads[1][0] == blob.chunks[2].offset
        source.held[1].set()
        await wait_until(lambda: all(c.digest in cache.chunks for c in blob.chunks[2:]))
        await trio.testing.wait_all_tasks_blocked()
        assert not prefetched.is_set()  # the first two are not in yet
        source.held[0].set()
        await prefetched.wait()
    assert all(chunk.digest in cache.chunks for chunk in blob.chunks)
    assert len(source.reads) == 2
