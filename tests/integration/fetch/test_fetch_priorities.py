"""Priorities and the bandwidth cap, against a real registry.

Who went first is read from the order requests reached a proxy, not from how long they
took; how long a throttled prefetch took is bounded only from below (a loaded machine
stretches it). The cap's exact accounting is asserted on a virtual clock in
tests/unit/fetch/test_fetcher_timing.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from lazyimage.fetch import FetchConfig, Priority, TokenBucket

from tests.fixtures.faults import FaultProxy
from tests.fixtures.registry import RegistryServer
from tests.integration.fetch.helpers import (
    KiB,
    MiB,
    app_items,
    client_for,
    layer_fetcher,
    push_layer,
    range_gets,
    sample,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """No faults: it notes each request as it arrives, in order."""
    with FaultProxy(registry.host) as running:
        yield running


async def test_demand_overtakes_a_throttled_prefetch(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    layer = await push_layer(
        registry.host, "prio/demand", tmp_path, app_items(32, 256 * KiB, seed=2)
    )
    chunks = layer.chunks("app/")
    wanted = layer.file("app/file031")  # the last file: the prefetch reaches it last
    bucket = TokenBucket(rate=2 * MiB, burst=256 * KiB)
    config = FetchConfig(prefetch_range=1 * MiB)
    times: dict[str, float] = {}
    seen_when_asked: list[int] = []

    def blob_gets() -> list[str | None]:
        return [r.range for r in proxy.requests if r.method == "GET" and layer.digest in r.path]

    async with client_for(proxy.host) as client:
        with layer_fetcher(
            client, layer, tmp_path / "cache", config, bucket, via=proxy.host
        ) as fetch:
            started = anyio.current_time()

            async def prefetch() -> None:
                await fetch.prefetch(chunks)
                times["prefetch"] = anyio.current_time() - started

            async def demand() -> None:
                await anyio.sleep(0.5)
                seen_when_asked.append(len(blob_gets()))
                await fetch.read(wanted)

            async with anyio.create_task_group() as group:
                group.start_soon(prefetch)
                group.start_soon(demand)
            await fetch.flush()
            assert all(fetch.cache.contains(c.digest) for c in chunks)
    gets = blob_gets()
    mine = gets.index(f"bytes={wanted[0].offset}-{wanted[-1].end - 1}")
    # The demand was asked during the prefetch, and its request went out before the
    # prefetch's later ranges: at most the prefetch's ranges already past the gate (and
    # the bucket), 4 at once, reached the registry between the asking and the demand's
    # request.
    [asked] = seen_when_asked
    assert asked > 0 and mine < len(gets) - 1, (asked, mine, gets)
    assert mine - asked <= 4, (asked, mine, gets)
    # Throttled: the prefetch's 8 MiB cannot have taken less than the cap allows.
    assert times["prefetch"] > 2.5, times
    # The demand chunk was not fetched twice.
    assert sum(range_gets(registry, layer.digest)) == chunks[-1].end - chunks[0].offset


async def test_prefetch_bandwidth_is_capped(registry: RegistryServer, tmp_path: Path) -> None:
    layer = await push_layer(registry.host, "prio/cap", tmp_path, app_items(32, 256 * KiB, seed=3))
    chunks = layer.chunks("app/")
    rate, burst = 4 * MiB, 256 * KiB
    async with client_for(registry.host) as client:
        with layer_fetcher(
            # The cap alone: no quiet period before the fill.
            client,
            layer,
            tmp_path / "cache",
            FetchConfig(background_quiet=0),
            TokenBucket(rate, burst),
        ) as fetch:
            registry.clear_access_log()
            started = anyio.current_time()
            await fetch.prefetch(chunks, Priority.BACKGROUND)
            elapsed = anyio.current_time() - started
    sent = sum(range_gets(registry, layer.digest))
    assert sent == chunks[-1].end - chunks[0].offset
    # Never faster than the cap: the burst, then rate bytes a second (0.95 for the clock's
    # grain). That it is not slower than the cap is asserted on a virtual clock.
    assert elapsed >= (sent - burst) / rate * 0.95, (sent, elapsed)
    assert sample("lazyimage_fetched_bytes_total", layer=layer.digest, reason="background") == sent


async def test_background_fill_waits_for_quiet_in_short_ranges(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(
        registry.host, "prio/quiet", tmp_path, app_items(32, 256 * KiB, seed=5)
    )
    chunks = layer.chunks("app/")
    quiet = 0.5
    config = FetchConfig(background_quiet=quiet, background_range=600 * KiB)
    times: dict[str, float] = {}
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config) as fetch:
            registry.clear_access_log()
            started = anyio.current_time()

            async def fill() -> None:
                await fetch.prefetch(chunks, Priority.BACKGROUND)
                times["fill"] = anyio.current_time() - started

            async def demand() -> None:
                await anyio.sleep(0.3)  # within the fill's first quiet period
                await fetch.read(layer.file("app/file000"))
                times["demand"] = anyio.current_time() - started
                times["filled_then"] = sample(
                    "lazyimage_fetched_bytes_total", layer=layer.digest, reason="background"
                )

            async with anyio.create_task_group() as group:
                group.start_soon(fill)
                group.start_soon(demand)
    # Nothing of the fill went before the demand read; the fill then waited a quiet period.
    assert times["filled_then"] == 0
    assert times["fill"] >= times["demand"] + quiet, times
    sent = range_gets(registry, layer.digest)
    assert sum(sent) == chunks[-1].end - chunks[0].offset
    assert len(sent) > 10 and max(sent) <= 600 * KiB


async def test_prefetch_zone_in_a_few_large_ranges(
    registry: RegistryServer, tmp_path: Path
) -> None:
    items = app_items(60, 200 * KiB, seed=4)
    prioritized = tuple(f"app/file{i:03d}" for i in range(0, 60, 2))
    layer = await push_layer(registry.host, "prio/zone", tmp_path, items, prioritized=prioritized)
    zone = layer.toc.prefetch_zone
    assert zone > 0
    in_zone = [c for c in layer.chunks() if c.end <= zone]
    async with client_for(registry.host) as client:
        with layer_fetcher(
            client, layer, tmp_path / "cache", FetchConfig(prefetch_range=4 * MiB)
        ) as fetch:
            registry.clear_access_log()
            await fetch.prefetch(in_zone)
            await fetch.flush()
            assert all(fetch.cache.contains(c.digest) for c in in_zone)
            # Reading a prioritized file now costs no request.
            await fetch.read(layer.file("app/file010"))
    sent = range_gets(registry, layer.digest)
    assert sum(sent) > 4 * MiB and len(sent) <= 3  # about 6 MiB in ranges of up to 4
    assert all(size <= 4 * MiB for size in sent)
    assert sum(sent) == in_zone[-1].end - in_zone[0].offset
    ratio = sample("lazyimage_layer_fetched_ratio", layer=layer.digest)
    assert ratio == pytest.approx((in_zone[-1].end - in_zone[0].offset) / layer.size, rel=0.01)
