"""LayerFetcher against a real registry: single flight, merging, the cache, verification.

Requests are counted in the registry's own access log.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import anyio
import pytest
from lazyimage import estargz
from lazyimage.errors import VerificationError
from lazyimage.fetch import FetchConfig

from tests.fixtures.faults import FaultProxy
from tests.fixtures.registry import RegistryServer
from tests.integration.fetch.helpers import (
    client_for,
    forged_member,
    layer_fetcher,
    push_layer,
    range_gets,
    sample,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_32_concurrent_readers_fetch_each_chunk_once(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "fetch/once", tmp_path)
    chunks = layer.chunks("app/")
    assert len(chunks) >= 40
    with FaultProxy(registry.host) as proxy:
        async with client_for(proxy.host) as client:
            with layer_fetcher(client, layer, tmp_path / "cache", via=proxy.host) as fetch:
                registry.clear_access_log()

                async def reader(n: int) -> None:
                    window = chunks[n : n + 8]  # each overlaps its neighbours' windows
                    data = await fetch.read(window)
                    for chunk, got in zip(window, data, strict=True):
                        assert "sha256:" + hashlib.sha256(got).hexdigest() == chunk.digest

                async with anyio.create_task_group() as group:
                    for n in range(32):
                        group.start_soon(reader, n)
    wanted = chunks[: 32 + 7]
    members = {(c.offset, c.end) for c in wanted}
    sent = range_gets(registry, layer.digest)
    # Every member was sent once: the bytes add up to the members, with nothing twice.
    assert sum(sent) == sum(end - offset for offset, end in members)
    assert len(sent) <= 32
    # And by the Range headers the proxy saw: no byte was asked for twice.
    asked = sorted(_range(r.range) for r in proxy.requests if r.range)
    for (_, last), (first, _) in itertools.pairwise(asked):
        assert last < first
    assert fetch.fetched_bytes == sum(sent)


async def test_adjacent_chunks_read_together_are_one_request(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "fetch/adjacent", tmp_path)
    chunks = layer.chunks("app/")[5:15]
    assert all(a.end == b.offset for a, b in itertools.pairwise(chunks))
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache") as fetch:
            registry.clear_access_log()
            await fetch.read(chunks)
    assert range_gets(registry, layer.digest) == [chunks[-1].end - chunks[0].offset]


async def test_cache_hits_make_no_request_even_after_a_restart(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "fetch/cached", tmp_path)
    chunks = layer.file("data/4MiB-plus-1") + layer.chunks("app/")[:10]
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache") as fetch:
            first = await fetch.read(chunks)
            await fetch.flush()
            registry.clear_access_log()
            assert await fetch.read(chunks) == first
            assert registry.blob_gets(layer.digest) == []
        # A new fetcher and a new cache object on the same directory: what an agent
        # restart sees. It fetches nothing.
        with layer_fetcher(client, layer, tmp_path / "cache") as again:
            assert await again.read(chunks) == first
            assert again.fetched_bytes == 0
    assert registry.blob_gets(layer.digest) == []
    assert sample("lazyimage_cache_hits_total", layer=layer.digest) >= 2 * len(chunks)


async def test_a_forged_chunk_in_the_registry_is_refused(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "fetch/tampered", tmp_path)
    victim = layer.file("app/file007")[0]
    good = layer.file("app/file006")[0]
    member = layer.blob[victim.offset : victim.end]
    forged = forged_member(member, victim.size)
    with open(registry.blob_path(layer.digest), "r+b") as stored:
        stored.seek(victim.offset)
        stored.write(forged)
    # The forged member is valid gzip: only the chunk digest can catch it.
    with pytest.raises(VerificationError, match="does not match"):
        estargz.verify_chunk(victim, forged)
    failures = sample("lazyimage_chunk_verification_failures_total", layer=layer.digest)
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache") as fetch:
            registry.clear_access_log()
            with pytest.raises(VerificationError) as caught:
                await fetch.read([good, victim])
            await fetch.flush()
            assert not fetch.cache.contains(victim.digest)
            # The good chunk in the same request was served and cached.
            assert fetch.cache.contains(good.digest)
    message = str(caught.value)
    assert layer.digest in message and "app/file007" in message
    assert f"offset {victim.chunk_offset}" in message
    after = sample("lazyimage_chunk_verification_failures_total", layer=layer.digest)
    assert after - failures == 2
    # One merged request for both, then the forged member again, alone.
    assert range_gets(registry, layer.digest) == [victim.end - good.offset, len(member)]


async def test_toc_through_the_source(registry: RegistryServer, tmp_path: Path) -> None:
    layer = await push_layer(registry.host, "fetch/toc", tmp_path)
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache") as fetch:
            registry.clear_access_log()
            loader = estargz.TOCLoader(layer.size)
            rest = loader.feed_tail(await fetch.source.read(*loader.tail_range))
            if rest is not None:
                loader.feed_rest(await fetch.source.read(*rest))
            assert loader.toc().digest == layer.toc.digest
    assert 1 <= len(range_gets(registry, layer.digest)) <= 2


async def test_a_large_read_is_split_at_max_range(registry: RegistryServer, tmp_path: Path) -> None:
    layer = await push_layer(registry.host, "fetch/large", tmp_path)
    chunks = layer.file("data/exact-4MiB")  # 16 random chunks of 256 KiB
    config = FetchConfig(max_range=1 << 20)
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config) as fetch:
            registry.clear_access_log()
            data = await fetch.read(chunks)
    assert len(b"".join(data)) == 4 << 20
    sent = range_gets(registry, layer.digest)
    assert 1 < len(sent) < len(chunks)
    assert all(size <= 1 << 20 for size in sent)
    assert sum(sent) == chunks[-1].end - chunks[0].offset


async def test_identical_chunks_are_fetched_once(registry: RegistryServer, tmp_path: Path) -> None:
    layer = await push_layer(registry.host, "fetch/zeros", tmp_path)
    chunks = layer.file("data/zeros")  # 36 identical chunks of zeros, and a short last one
    assert len({c.digest for c in chunks}) == 2
    async with client_for(registry.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache") as fetch:
            registry.clear_access_log()
            data = await fetch.read(chunks)
    assert b"".join(data) == bytes(sum(c.size for c in chunks))
    sent = range_gets(registry, layer.digest)
    assert sum(sent) <= (chunks[0].end - chunks[0].offset) + (chunks[-1].end - chunks[-1].offset)


def _range(header: str) -> tuple[int, int]:
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), int(last)
