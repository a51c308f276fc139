"""Read-ahead: a demand miss takes the chunks that follow it in the same range request,
verified like any chunk, within a window and a budget of bytes no reader asked for."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from lazyimage.errors import VerificationError
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


class Following:
    """``tree.chunks_following`` for a flat blob: the chunks after one, within ``limit``
    compressed bytes of its end; remembers the limits asked for."""

    def __init__(self, blob: Blob, index: int) -> None:
        self.blob = blob
        self.index = index
        self.limits: list[int] = []

    def __call__(self, limit: int) -> Sequence[Chunk]:
        self.limits.append(limit)
        end = self.blob.chunks[self.index].end
        return [c for c in self.blob.chunks[self.index + 1 :] if c.end <= end + limit]


def fetcher(
    blob: Blob, cache: DictCache | None = None, **config: object
) -> tuple[LayerFetcher, MemorySource, DictCache]:
    source = MemorySource(blob.data)
    store = cache if cache is not None else DictCache()
    fetch = LayerFetcher(
        source,
        store,
        layer_digest(),
        FetchConfig(**config),  # type: ignore[arg-type]
        gate=PriorityGate(),
        writer=CacheWriter(),
    )
    return fetch, source, store


async def test_a_miss_fetches_the_following_chunks_in_the_same_request() -> None:
    blob = make_blob([3000] * 6)
    # Ratio 3: the budget is three times what readers asked for.
    fetch, source, cache = fetcher(blob, read_ahead=64 * KiB, read_ahead_ratio=3.0)
    first = blob.chunks[0]
    assert await fetch.read([first], following=Following(blob, 0)) == [blob.contents[0]]
    await fetch.flush()
    # The budget after one member: the neighbours that fit in three times its size.
    taken = [c for c in blob.chunks[1:] if c.end - first.end <= 3 * (first.end - first.offset)]
    assert len(taken) >= 2
    assert source.reads == [(first.offset, taken[-1].end - first.offset)]
    assert set(cache.chunks) == {first.digest} | {c.digest for c in taken}
    # Read later, they come from the cache: no request.
    for chunk in taken:
        index = blob.chunks.index(chunk)
        assert await fetch.read_slice(chunk, 0, 10) == blob.contents[index][:10]
    assert len(source.reads) == 1
    reasons = {
        reason: sample("lazyimage_fetched_bytes_total", layer=fetch.layer, reason=reason)
        for reason in ("demand", "readahead")
    }
    assert reasons == {
        "demand": first.end - first.offset,
        "readahead": taken[-1].end - first.end,
    }


async def test_the_budget_grows_with_what_readers_read() -> None:
    blob = make_blob([3000] * 12)
    fetch, source, _ = fetcher(blob, read_ahead=64 * KiB, read_ahead_ratio=1.0)
    await fetch.read([blob.chunks[0]], following=Following(blob, 0))
    ahead_first = source.reads[0][1] - (blob.chunks[0].end - blob.chunks[0].offset)
    # Reading what was read ahead frees the budget and adds to it.
    await fetch.read([blob.chunks[1]], following=Following(blob, 1))
    at = next(i for i, c in enumerate(blob.chunks) if c.offset == sum(source.reads[0]))
    await fetch.read([blob.chunks[at]], following=Following(blob, at))
    assert len(source.reads) == 2
    assert source.reads[1][1] - (blob.chunks[at].end - blob.chunks[at].offset) > ahead_first


async def test_no_budget_no_read_ahead() -> None:
    blob = make_blob([3000] * 4)
    fetch, source, _ = fetcher(blob, read_ahead_ratio=0.0)
    following = Following(blob, 0)
    await fetch.read([blob.chunks[0]], following=following)
    assert source.reads == [(blob.chunks[0].offset, blob.chunks[0].end - blob.chunks[0].offset)]
    assert following.limits == []  # not even asked
    fetch, source, _ = fetcher(blob, read_ahead=0, read_ahead_ratio=1.0)
    await fetch.read([blob.chunks[0]], following=Following(blob, 0))
    assert len(source.reads) == 1 and source.reads[0][1] == blob.chunks[0].end - 64


async def test_the_window_bounds_the_whole_request() -> None:
    blob = make_blob([3000] * 40)
    member = blob.chunks[0].end - blob.chunks[0].offset
    fetch, source, _ = fetcher(blob, read_ahead=4 * member, read_ahead_ratio=100.0)
    following = Following(blob, 0)
    await fetch.read([blob.chunks[0]], following=following)
    [(_, length)] = source.reads
    assert length <= 4 * member
    assert following.limits == [4 * member - member]


async def test_read_ahead_stops_at_a_cached_or_distant_chunk() -> None:
    blob = make_blob([3000] * 6, gap=10)
    fetch, source, _ = fetcher(blob, read_ahead_ratio=100.0)
    await fetch.read([blob.chunks[0]], following=Following(blob, 0))
    first = blob.chunks[0]
    assert source.reads == [(first.offset, first.end - first.offset)]  # gap: not contiguous

    blob = make_blob([3000] * 6)
    cache = DictCache()
    cache.chunks[blob.chunks[2].digest] = blob.contents[2]
    fetch, source, _ = fetcher(blob, cache, read_ahead_ratio=100.0)
    await fetch.read([blob.chunks[0]], following=Following(blob, 0))
    assert source.reads == [(first.offset, blob.chunks[1].end - first.offset)]


async def test_a_forged_neighbour_is_not_cached_and_does_not_fail_the_read() -> None:
    blob = make_blob([3000] * 3)
    forged = bytearray(blob.data)
    neighbour = blob.chunks[1]
    fake = gzip_member(bytes(3000))  # a valid member with other bytes
    span = neighbour.end - neighbour.offset
    assert len(fake) <= span
    forged[neighbour.offset : neighbour.end] = fake + bytes(span - len(fake))
    blob = Blob(bytes(forged), blob.chunks, blob.contents)
    fetch, source, cache = fetcher(blob, read_ahead_ratio=100.0)
    failures = sample("lazyimage_chunk_verification_failures_total", layer=fetch.layer)

    assert await fetch.read([blob.chunks[0]], following=Following(blob, 0)) == [blob.contents[0]]
    await fetch.flush()
    assert len(source.reads) == 1  # no second try for a chunk no reader asked for
    assert neighbour.digest not in cache.chunks
    assert blob.chunks[2].digest in cache.chunks  # its other neighbour was fine
    assert sample("lazyimage_chunk_verification_failures_total", layer=fetch.layer) == (
        failures + 1
    )
    # Asked for, it is fetched as a reader's own chunk (and refused twice).
    with pytest.raises(VerificationError):
        await fetch.read([neighbour])
    assert source.reads[1:] == [(neighbour.offset, span)] * 2


async def test_read_ahead_is_for_demand_reads_only() -> None:
    blob = make_blob([3000] * 4)
    fetch, source, _ = fetcher(blob, read_ahead_ratio=100.0)
    following = Following(blob, 0)
    await fetch.read([blob.chunks[0]], Priority.PREFETCH, following=following)
    assert following.limits == []
    assert len(source.reads) == 1 and source.reads[0][1] == blob.chunks[0].end - 64


async def test_a_reader_of_a_chunk_being_read_ahead_waits_for_that_request() -> None:
    blob = make_blob([3000] * 4)
    fetch, source, _ = fetcher(blob, read_ahead_ratio=100.0)
    source.delay = 0.05
    results: dict[int, list[bytes]] = {}

    async def read(index: int, following: Following | None) -> None:
        results[index] = await fetch.read([blob.chunks[index]], following=following)

    async with anyio.create_task_group() as group:
        group.start_soon(read, 0, Following(blob, 0))
        await anyio.sleep(0.01)
        group.start_soon(read, 2, None)
    assert results == {0: [blob.contents[0]], 2: [blob.contents[2]]}
    assert len(source.reads) == 1
