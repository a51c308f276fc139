"""eStargz layers built from synthetic trees, pushed to the test registry as bare blobs."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lazyimage import estargz, metrics
from lazyimage.cache import ChunkCache
from lazyimage.estargz import TOC, Chunk
from lazyimage.fetch import (
    CacheWriter,
    FetchConfig,
    LayerFetcher,
    PriorityGate,
    RegistrySource,
    TokenBucket,
)
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

from tests.fixtures.registry import RegistryServer
from tests.layercases import CASES, Item, write_tar

KiB = 1 << 10
MiB = 1 << 20
# Quick retries, so that fault tests measure the fetcher rather than the backoff.
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.05, max_delay=0.2, total_timeout=20.0)


def app_items(count: int, size: int, seed: int) -> list[Item]:
    """``count`` incompressible files of about ``size`` bytes under app/."""
    rng = random.Random(seed)
    items = [Item("app", "dir", mode=0o755)]
    for index in range(count):
        length = max(1, size + rng.randint(-size // 4, size // 4))
        items.append(Item(f"app/file{index:03d}", "reg", rng.randbytes(length)))
    return items


@dataclass
class Layer:
    """An eStargz blob, its TOC, and where it was pushed."""

    blob: bytes
    digest: str
    toc: TOC
    ref: Reference

    @property
    def size(self) -> int:
        return len(self.blob)

    def chunks(self, prefix: str = "") -> list[Chunk]:
        """Every chunk of the files under ``prefix``, in blob order."""
        found = [c for node in self.toc if node.path.startswith(prefix) for c in node.chunks]
        return sorted(found, key=lambda c: (c.offset, c.inner_offset))

    def file(self, path: str) -> list[Chunk]:
        node = self.toc.lookup(path)
        assert node is not None, path
        return list(node.chunks)


def build_layer(
    tmp_path: Path,
    items: list[Item],
    *,
    chunk_size: int = 256 * KiB,
    prioritized: tuple[str, ...] = (),
) -> tuple[bytes, TOC]:
    tar = write_tar(items, tmp_path / "layer.tar")
    out = tmp_path / "layer.esgz"
    options = estargz.BuildOptions(chunk_size=chunk_size, prioritized=prioritized, level=6)
    with open(out, "wb") as f:
        estargz.build(tar, f, options)
    blob = out.read_bytes()
    toc = estargz.open_toc(lambda o, n: blob[o : o + n], len(blob))
    return blob, toc


async def push_layer(
    host: str, repository: str, tmp_path: Path, items: list[Item] | None = None, **options: object
) -> Layer:
    """Build a layer (default: the 'everything' case plus 40 app files) and push its blob."""
    blob, toc = build_layer(
        tmp_path,
        items if items is not None else [*CASES["everything"](), *app_items(40, 150 * KiB, 1)],
        **options,  # type: ignore[arg-type]
    )
    ref = Reference.parse(f"{host}/{repository}:layer")
    digest = sha256_digest(blob)
    async with RegistryClient(insecure_registries=(host,)) as client:
        await client.push_blob(ref, blob, digest, len(blob))
    return Layer(blob, digest, toc, ref)


def client_for(host: str, retry: RetryPolicy = FAST_RETRY) -> RegistryClient:
    return RegistryClient(insecure_registries=(host,), retry=retry)


@contextmanager
def layer_fetcher(
    client: RegistryClient,
    layer: Layer,
    cache_dir: Path,
    config: FetchConfig | None = None,
    bucket: TokenBucket | None = None,
    via: str | None = None,
) -> Iterator[LayerFetcher]:
    """A fetcher over the registry (or the proxy at ``via``) and a ChunkCache on
    ``cache_dir``."""
    config = config or FetchConfig()
    ref = layer.ref
    if via is not None:
        ref = Reference.parse(f"{via}/{ref.repository}:layer")
    source = RegistrySource(
        client, ref, layer.digest, layer.size, stall_timeout=config.stall_timeout
    )
    with ChunkCache(cache_dir, 1 << 30) as cache:
        fetcher = LayerFetcher(
            source, cache, layer.digest, config, bucket, gate=PriorityGate(), writer=CacheWriter()
        )
        try:
            yield fetcher
        finally:
            fetcher.close()


def range_gets(registry: RegistryServer, digest: str) -> list[int]:
    """Bytes sent for each ranged GET of the blob, as the registry logged them."""
    records = registry.blob_gets(digest)
    assert all(r.status == 206 for r in records), [r.status for r in records]
    return [r.size for r in records]


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def forged_member(member: bytes, size: int) -> bytes:
    """A valid gzip member exactly as long as ``member`` whose first ``size`` uncompressed
    bytes differ: correct CRC-32 and ISIZE, padded with an FCOMMENT header field, so only a
    digest check can tell."""
    original = zlib.decompressobj(31).decompress(member)
    pattern = b"forged chunk content "
    fake = (pattern * (size // len(pattern) + 1))[:size] + original[size:]
    assert fake != original
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(fake) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(fake), len(fake) & 0xFFFFFFFF)
    comment = len(member) - (10 + len(body) + len(trailer)) - 1
    assert comment >= 0, "forged content does not compress well enough"
    header = b"\x1f\x8b\x08\x10" + b"\0\0\0\0" + b"\x00\xff"  # FLG.FCOMMENT, no mtime
    forged = header + b"c" * comment + b"\0" + body + trailer
    assert len(forged) == len(member)
    assert zlib.decompressobj(31).decompress(forged) == fake
    return forged
