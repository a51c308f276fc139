"""Hand-made blobs of gzip members, an in-memory RangeSource and a dict-backed cache.

The fetcher needs only chunks and bytes, not a TOC, so these blobs can have any layout:
gaps between members, several chunks in one member, forged members.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import zlib
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from lazyimage import metrics
from lazyimage.errors import UnavailableError
from lazyimage.estargz import Chunk


def gzip_member(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    """Half random, half repeated: compresses a little, like real files."""
    rng = random.Random(seed)
    half = rng.randbytes(size // 2)
    return (half + half)[:size] if size > 1 else rng.randbytes(size)


def layer_digest() -> str:
    """A fresh label value, so metric samples of one test are its own."""
    return "sha256:" + secrets.token_hex(32)


@dataclass
class Blob:
    data: bytes
    chunks: list[Chunk]
    contents: list[bytes]


def make_blob(
    sizes: list[int], *, gap: int = 0, per_member: int = 1, seed: int = 0, prefix: int = 64
) -> Blob:
    """Files of ``sizes`` bytes, ``per_member`` of them in each gzip member (inner offsets),
    ``gap`` filler bytes between members, after a ``prefix`` of filler."""
    contents = [payload(size, seed * 1000 + i) for i, size in enumerate(sizes)]
    out = bytearray(b"\xee" * prefix)
    chunks: list[Chunk] = []
    for start in range(0, len(contents), per_member):
        group = contents[start : start + per_member]
        member = gzip_member(b"".join(group))
        offset, inner = len(out), 0
        for index, data in enumerate(group, start):
            chunks.append(
                Chunk(
                    f"file{index}", offset, offset + len(member), inner, 0, len(data), sha256(data)
                )
            )
            inner += len(data)
        out += member
        out += b"\xee" * gap
    return Blob(bytes(out), chunks, contents)


@dataclass
class MemorySource:
    """A RangeSource over bytes that records reads, and can be slow or fail."""

    data: bytes
    delay: float = 0.0
    fail_next: int = 0  # this many reads raise UnavailableError first
    reads: list[tuple[int, int]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)  # each read's

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, offset: int, length: int, *, deadline: float | None = None) -> bytes:
        self.reads.append((offset, length))
        self.deadlines.append(deadline)
        if self.delay:
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()
        if self.fail_next:
            self.fail_next -= 1
            raise UnavailableError("injected failure", what="test blob")
        return self.data[offset : offset + length]

    @property
    def bytes_read(self) -> int:
        return sum(length for _, length in self.reads)


@dataclass
class DictCache:
    """The fetcher's view of the chunk cache, in memory; ``full`` refuses every put."""

    chunks: dict[str, bytes] = field(default_factory=dict)
    full: bool = False
    puts: list[str] = field(default_factory=list)

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes | None:
        data = self.chunks.get(digest)
        if data is None:
            return None
        return data[offset:] if length is None else data[offset : offset + length]

    def contains(self, digest: str) -> bool:
        return digest in self.chunks

    def put(self, digest: str, data: bytes) -> bool:
        self.puts.append(digest)
        if self.full:
            return False
        self.chunks[digest] = bytes(data)
        return True


def sample(name: str, **labels: str) -> float:
    """A metric sample's value (0 if the label set was never used)."""
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value
