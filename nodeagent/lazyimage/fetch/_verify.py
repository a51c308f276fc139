"""Chunk verification in worker threads, in batches."""

from __future__ import annotations

from typing import TypeVar

from lazyimage.errors import FormatError, LazyImageError, VerificationError
from lazyimage.estargz import Chunk, verify_chunk
from lazyimage.fetch._ranges import ByteRange

__all__ = ["VERIFY_BATCH", "batches", "verify_all"]

# Compressed bytes verified per worker-thread call: large enough that the thread hop is
# cheap next to the work, small enough that a span's chunks are verified on every core.
VERIFY_BATCH = 4 << 20

T = TypeVar("T")


def verify_all(items: list[tuple[Chunk, memoryview]]) -> list[bytes | LazyImageError]:
    """Runs in a worker thread (zlib and hashlib release the GIL): inflate and hash each
    chunk from its member's bytes. A result is the chunk's bytes or why they were refused."""
    results: list[bytes | LazyImageError] = []
    for chunk, member in items:
        try:
            results.append(verify_chunk(chunk, member))
        except (VerificationError, FormatError) as exc:
            results.append(exc)
    return results


def batches(
    items: list[tuple[ByteRange, T, memoryview]], limit: int = VERIFY_BATCH
) -> list[list[tuple[ByteRange, T, memoryview]]]:
    """Consecutive members grouped into batches of about ``limit`` compressed bytes."""
    grouped: list[list[tuple[ByteRange, T, memoryview]]] = []
    current: list[tuple[ByteRange, T, memoryview]] = []
    size = 0
    for item in items:
        current.append(item)
        size += item[0].length
        if size >= limit:
            grouped.append(current)
            current, size = [], 0
    if current:
        grouped.append(current)
    return grouped
