"""The Debian python image, converted and pushed: prefetch every layer, then read files.

Prints the figures (run with -s): compressed and uncompressed throughput over loopback.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import anyio
import pytest
from lazyimage import estargz
from lazyimage.cache import ChunkCache
from lazyimage.estargz import TOC, Chunk
from lazyimage.fetch import CacheWriter, FetchConfig, LayerFetcher, PriorityGate, RegistrySource
from lazyimage.oci import Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.convert.cli import lazyimage

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(IMAGE_TEST_TIMEOUT),
]


def _convert_and_push(image: TestImage, registry: RegistryServer, tmp_path: Path) -> str:
    out = tmp_path / "esgz"
    converted = lazyimage("convert", image.ref, f"oci:{out}:v1")
    assert converted.code == 0, converted.err
    target = f"{registry.host}/python/esgz:v1"
    pushed = lazyimage("copy", f"oci:{out}:v1", target, "--insecure-registry", registry.host)
    assert pushed.code == 0, pushed.err
    return target


async def _toc(source: RegistrySource) -> TOC:
    loader = estargz.TOCLoader(source.size)
    rest = loader.feed_tail(await source.read(*loader.tail_range))
    if rest is not None:
        loader.feed_rest(await source.read(*rest))
    return loader.toc()


def _all_chunks(toc: TOC) -> list[Chunk]:
    return sorted(
        (c for node in toc for c in node.chunks), key=lambda c: (c.offset, c.inner_offset)
    )


async def test_prefetch_and_read_the_python_image(
    registry: RegistryServer, python_image: TestImage, tmp_path: Path
) -> None:
    target = await anyio.to_thread.run_sync(_convert_and_push, python_image, registry, tmp_path)
    ref = Reference.parse(target)
    registry.clear_access_log()
    lines = []
    async with RegistryClient(insecure_registries=(registry.host,)) as client:
        fetched = await client.get_manifest(ref)
        layers = Manifest.parse(fetched.data, fetched.media_type).layers
        with ChunkCache(tmp_path / "cache", 1 << 30) as cache:
            total_compressed = total_plain = 0
            total_time = 0.0
            for layer in layers:
                source = RegistrySource(client, ref, layer.digest, layer.size)
                toc = await _toc(source)
                chunks = _all_chunks(toc)
                fetcher = LayerFetcher(
                    source,
                    cache,
                    layer.digest,
                    FetchConfig(),
                    gate=PriorityGate(),
                    writer=CacheWriter(),
                )
                started = time.perf_counter()
                await fetcher.prefetch(chunks)
                elapsed = time.perf_counter() - started
                assert all(cache.contains(c.digest) for c in chunks)
                plain = sum(c.size for c in {c.digest: c for c in chunks}.values())
                total_compressed += fetcher.fetched_bytes
                total_plain += plain
                total_time += elapsed
                lines.append(
                    f"layer {layer.digest[7:19]}: {fetcher.fetched_bytes / 1e6:6.1f} MB, "
                    f"{plain / 1e6:6.1f} MB verified into the cache in {elapsed:5.2f} s "
                    f"({fetcher.fetched_bytes / 1e6 / elapsed:6.1f} MB/s compressed, "
                    f"{plain / 1e6 / elapsed:6.1f} MB/s uncompressed)"
                )
                # Whole-file digests of the biggest files match, read back through the cache.
                biggest = sorted(
                    (n for n in toc if n.type == "reg" and n.chunks), key=lambda n: -n.size
                )[:3]
                for node in biggest:
                    data = b"".join(await fetcher.read(node.chunks))
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == node.entry.digest
                assert fetcher.fetched_bytes <= layer.size
                fetcher.close()
    lines.append(
        f"all layers: {total_compressed / 1e6:.1f} MB compressed, {total_plain / 1e6:.1f} MB "
        f"uncompressed in {total_time:.2f} s ({total_compressed / 1e6 / total_time:.1f} MB/s, "
        f"{total_plain / 1e6 / total_time:.1f} MB/s uncompressed)"
    )
    print("\n" + "\n".join(lines))
    gets = [r for r in registry.access_log() if r.method == "GET" and "/blobs/" in r.path]
    assert all(r.status == 206 for r in gets)


async def test_cold_demand_reads_of_the_biggest_file(
    registry: RegistryServer, python_image: TestImage, tmp_path: Path
) -> None:
    target = await anyio.to_thread.run_sync(_convert_and_push, python_image, registry, tmp_path)
    ref = Reference.parse(target)
    async with RegistryClient(insecure_registries=(registry.host,)) as client:
        fetched = await client.get_manifest(ref)
        layers = Manifest.parse(fetched.data, fetched.media_type).layers
        best: tuple[int, str, int, TOC] | None = None
        for layer in layers:
            toc = await _toc(RegistrySource(client, ref, layer.digest, layer.size))
            node = max((n for n in toc if n.type == "reg"), key=lambda n: n.size)
            if best is None or node.size > best[0]:
                best = (node.size, layer.digest, layer.size, toc)
        assert best is not None
        size, digest, blob_size, toc = best
        node = max((n for n in toc if n.type == "reg"), key=lambda n: n.size)
        source = RegistrySource(client, ref, digest, blob_size)
        with ChunkCache(tmp_path / "cache", 1 << 30) as cache:
            fetcher = LayerFetcher(
                source, cache, digest, FetchConfig(), gate=PriorityGate(), writer=CacheWriter()
            )
            started = time.perf_counter()
            whole = hashlib.sha256()
            for chunk in node.chunks:  # one chunk at a time, as a sequential reader would
                whole.update((await fetcher.read([chunk]))[0])
            elapsed = time.perf_counter() - started
            assert "sha256:" + whole.hexdigest() == node.entry.digest
            print(
                f"\ncold sequential demand read of {node.path} ({size / 1e6:.1f} MB, "
                f"{len(node.chunks)} chunks): {elapsed:.2f} s, {size / 1e6 / elapsed:.1f} MB/s; "
                f"{fetcher.fetched_bytes / 1e6:.1f} MB fetched"
            )
            await fetcher.flush()
