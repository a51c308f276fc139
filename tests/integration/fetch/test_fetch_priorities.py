"""Priorities and the bandwidth cap, against a real registry."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from lazyimage.fetch import FetchConfig, Priority, TokenBucket

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


async def test_demand_overtakes_a_throttled_prefetch(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(
        registry.host, "prio/demand", tmp_path, app_items(32, 256 * KiB, seed=2)
    )
    chunks = layer.chunks("app/")
    bucket = TokenBucket(rate=2 * MiB, burst=256 * KiB)
    config = FetchConfig(max_range=1 * MiB)
    times: dict[str, float] = {}
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config, bucket) as fetch:
            started = anyio.current_time()

            async def prefetch() -> None:
                await fetch.prefetch(chunks)
                times["prefetch"] = anyio.current_time() - started

            async def demand() -> None:
                await anyio.sleep(0.5)
                asked = anyio.current_time()
                await fetch.read(layer.file("app/file031"))
                times["demand"] = anyio.current_time() - asked

            async with anyio.create_task_group() as group:
                group.start_soon(prefetch)
                group.start_soon(demand)
            await fetch.flush()
            assert all(fetch.cache.contains(c.digest) for c in chunks)
    assert times["demand"] < 0.3, times
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
    assert (sent - burst) / rate * 0.95 <= elapsed < sent / rate + 1.5, (sent, elapsed)
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
            client, layer, tmp_path / "cache", FetchConfig(max_range=4 * MiB)
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
