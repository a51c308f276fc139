"""Warming the kernel's caches of a mounted layer: its files read once through the mount.

A container started from an image on disk finds what it reads in the page cache and its
lookups in the dentry cache, because the pull has just written the files. A prewarmed image
has its files in the agent's chunk cache, yet each first lookup and read of a new container
would still be a FUSE round trip to the agent: hundreds per start, about 100 µs each. Layers
never change, and the mount keeps entries, attributes and pages for good (no_open, infinite
timeouts), so one read of each file here leaves them where the container's overlayfs finds
them without asking the agent.

Runs in a worker thread: its reads are served by the agent's own event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["WARM_LIMIT", "Warmed", "warm_files"]

log = structlog.get_logger(__name__)

# File bytes one call reads at most: a prewarm leaves a zone and a startup profile in the
# page cache, as a pull would, not a whole large layer.
WARM_LIMIT = 256 << 20
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Warmed:
    files: int  # read to their end
    bytes: int
    failed: int  # could not be opened or read (the layer went away, a fetch failed)
    skipped: int  # left out past the byte limit


def warm_files(root: Path, files: Iterable[tuple[str, int]], limit: int = WARM_LIMIT) -> Warmed:
    """Read each ``(path, size)`` under ``root`` to its end, in the order given, until
    ``limit`` bytes. Failures are counted, never raised: this only saves later round trips."""
    buffer = bytearray(_BLOCK)
    warmed = read = failed = skipped = 0
    for path, size in files:
        if read + size > limit:
            skipped += 1
            continue
        try:
            read += _read_through(root / path, buffer)
        except OSError as exc:
            failed += 1
            log.debug("warm_failed", path=path, error=str(exc))
        else:
            warmed += 1
    return Warmed(warmed, read, failed, skipped)


def _read_through(path: Path, buffer: bytearray) -> int:
    # O_NOFOLLOW: the caller resolved the path to a regular file through directories only.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        total = 0
        while count := os.readv(fd, [buffer]):
            total += count
        return total
    finally:
        os.close(fd)
