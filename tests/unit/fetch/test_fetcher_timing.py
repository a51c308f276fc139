"""LayerFetcher's clocks: the demand deadline, the stall watchdog with its retry, and the
bandwidth cap. On a virtual clock (tests.unit.virtual_clock), so each wait is measured
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


async def test_demand_deadline_bounds_a_failing_read() -> None:
    blob = make_blob([10_000])
    source = MemorySource(blob.data, fail_next=10**6)
    fetch = fetcher(source, FetchConfig(demand_deadline=1.0))
    started = anyio.current_time()
    with pytest.raises(UnavailableError, match="injected failure") as caught:
        await fetch.read(blob.chunks)
    assert fetch.layer in str(caught.value)
    # It retried, and gave up by the deadline, not one backoff later.
    assert len(source.reads) >= 2
    assert anyio.current_time() - started <= 1.0


class HangOnce(MemorySource):
    async def read(self, offset: int, length: int) -> bytes:
        if not self.reads:
            self.reads.append((offset, length))
            await anyio.sleep_forever()
        return await super().read(offset, length)


async def test_a_hung_request_is_abandoned_and_retried() -> None:
    blob = make_blob([10_000])
    source = HangOnce(blob.data)
    fetch = fetcher(source, FetchConfig(stall_timeout=0.3))
    started = anyio.current_time()
    assert await fetch.read(blob.chunks) == blob.contents
    elapsed = anyio.current_time() - started
    assert len(source.reads) == 2
    # The watchdog gave up on the hung request at stall_timeout plus the time its length
    # may take at the minimum rate, and the retry followed after one backoff.
    limit = 0.3 + source.reads[0][1] / _requests._MIN_RATE
    assert limit <= elapsed <= limit + _requests._RETRY_BASE_DELAY


async def test_bucket_caps_prefetch_bandwidth() -> None:
    blob = make_blob([50 * KiB] * 8, seed=8)
    rate, burst = 400 * KiB, 16 * KiB
    source = MemorySource(blob.data)
    fetch = fetcher(source, FetchConfig(max_range=100 * KiB), TokenBucket(rate=rate, burst=burst))
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
