"""LayerFetcher's clocks: the demand deadline, the deadline's hold on a source that overruns
it, and the bandwidth cap. On a virtual clock (tests.unit.virtual_clock), so each wait is measured
exactly and a loaded machine cannot stretch it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from lazyimage.errors import UnavailableError
from lazyimage.fetch import (
    CacheWriter,
    FetchConfig,
    LayerFetcher,
    Priority,
    PriorityGate,
    TokenBucket,
    _requests,
)

from tests.unit.fetch.helpers import DictCache, MemorySource, layer_digest, make_blob
from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KiB = 1 << 10


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


def fetcher(
    source: MemorySource, config: FetchConfig, bucket: TokenBucket | None = None
) -> LayerFetcher:
    return LayerFetcher(
        source,
        DictCache(),
        layer_digest(),
        config,
        bucket,
        gate=PriorityGate(),
        writer=CacheWriter(),
    )


class Hang(MemorySource):
    """A source that never answers and ignores its deadline."""

    async def read(self, offset: int, length: int, *, deadline: float | None = None) -> bytes:
        self.reads.append((offset, length))
        self.deadlines.append(deadline)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_demand_deadline_bounds_a_read_whose_source_hangs() -> None:
    blob = make_blob([10_000])
    source = Hang(blob.data)
    fetch = fetcher(source, FetchConfig(demand_deadline=1.0))
    started = anyio.current_time()
    with pytest.raises(UnavailableError, match="not served within 1 s") as caught:
        await fetch.read(blob.chunks)
    assert fetch.layer in str(caught.value)
    assert anyio.current_time() - started == pytest.approx(1.0)
    assert source.deadlines == [pytest.approx(started + 1.0)]


async def test_a_source_that_overruns_its_deadline_is_cut_off() -> None:
    # Prefetch has no deadline of its own: the request's deadline, plus the grace a source
    # gets to return after it, is all the hold there is.
    blob = make_blob([10_000])
    source = Hang(blob.data)
    fetch = fetcher(source, FetchConfig(demand_deadline=1.0))
    started = anyio.current_time()
    with pytest.raises(UnavailableError, match="overran its deadline"):
        await fetch.read(blob.chunks, Priority.PREFETCH)
    assert anyio.current_time() - started == pytest.approx(1.0 + _requests.DEADLINE_GRACE)
    assert len(source.reads) == 1


async def test_bucket_caps_prefetch_bandwidth() -> None:
    blob = make_blob([50 * KiB] * 8, seed=8)
    rate, burst = 400 * KiB, 16 * KiB
    source = MemorySource(blob.data)
    fetch = fetcher(
        source, FetchConfig(prefetch_range=100 * KiB), TokenBucket(rate=rate, burst=burst)
    )
    started = anyio.current_time()
    await fetch.prefetch(blob.chunks)
    assert len(source.reads) > 1
    # Exactly the cap: the burst is free, every other byte costs 1/rate s, and nothing
    # else waits.
    assert anyio.current_time() - started == pytest.approx((source.bytes_read - burst) / rate)


async def test_low_priority_read_waits_for_the_bucket_demand_does_not() -> None:
    bucket = TokenBucket(rate=200 * KiB, burst=0)
    # Small enough to be verified on the event loop: a demand read that waited for a
    # worker thread would let the virtual clock jump to its deadline.
    blob = make_blob([30 * KiB], seed=1)
    config = FetchConfig(background_quiet=0)  # the bucket alone
    fetch = fetcher(MemorySource(blob.data), config, bucket)
    member = blob.chunks[0].end - blob.chunks[0].offset
    started = anyio.current_time()
    assert await fetch.read(blob.chunks, Priority.BACKGROUND) == blob.contents
    assert anyio.current_time() - started == pytest.approx(member / (200 * KiB))
    # The bucket is now a second in debt; demand reads do not use it.
    bucket.reserve(200 * KiB, anyio.current_time())
    other_blob = make_blob([30 * KiB], seed=2)
    other = fetcher(MemorySource(other_blob.data), config, bucket)
    started = anyio.current_time()
    assert await other.read(other_blob.chunks) == other_blob.contents
    assert anyio.current_time() == started
