"""Chunk files damaged on disk while the cache runs: torn, bytes flipped, replaced.

A damaged file is never served: the read is a miss (the fetcher fetches the chunk again),
the file is removed and counted. A file only touched, with its bytes intact, keeps serving.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache

from tests.unit.cache.helpers import chunk_path, make_chunk, metric_value

pytestmark = pytest.mark.timeout(10)

DISCARDED = "lazyimage_cache_discarded_chunks_total"


def _flip(path: Path, offset: int) -> None:
    """Change one byte in place, keeping the file's size and inode."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def test_bytes_flipped_while_running_are_never_served(tmp_path: Path) -> None:
    digest, data = make_chunk(50_000, random.Random(1))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest, data)
        assert cache.read(digest, 0, 100) == data[:100]  # its fd is open now
        before = metric_value(DISCARDED, reason="digest_mismatch")
        _flip(chunk_path(tmp_path, digest), 40_000)
        # Not even the untouched bytes at its start: the file is known to be changed.
        assert cache.read_resident(digest, 0, 100) is None
        assert cache.read(digest, 0, 100) is None
        assert not cache.contains(digest)
        assert not chunk_path(tmp_path, digest).exists()
        assert cache.stats().bytes == 0
        assert metric_value(DISCARDED, reason="digest_mismatch") == before + 1
        assert cache.put(digest, data)  # fetched again, stored again
        assert cache.read(digest) == data


def test_a_torn_file_is_counted(tmp_path: Path) -> None:
    digest, data = make_chunk(20_000, random.Random(2))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest, data)
        before = metric_value(DISCARDED, reason="size_changed")
        os.truncate(chunk_path(tmp_path, digest), 7_000)
        assert cache.read(digest, 10_000, 10) is None
        assert not chunk_path(tmp_path, digest).exists()
        assert metric_value(DISCARDED, reason="size_changed") == before + 1


def test_a_file_replaced_with_other_bytes_is_caught_when_opened_again(tmp_path: Path) -> None:
    first, first_data = make_chunk(30_000, random.Random(3))
    second, second_data = make_chunk(30_000, random.Random(4))
    with ChunkCache(tmp_path, 1 << 20, open_files=1) as cache:
        assert cache.put(first, first_data)
        assert cache.put(second, second_data)
        assert cache.read(first) == first_data
        # A new inode under the chunk's name, with the right size and wrong bytes.
        path = chunk_path(tmp_path, first)
        forged = tmp_path / "forged"
        forged.write_bytes(bytes(len(first_data)))
        os.replace(forged, path)
        # The open fd still reads the chunk's own inode: those bytes are right.
        assert cache.read(first) == first_data
        assert cache.read(second) == second_data  # its fd pushes out the first one's
        assert cache.read(first) is None  # opened again: the forged file is seen
        assert not path.exists()
        assert cache.read(second) == second_data


def test_a_touched_file_with_intact_bytes_keeps_serving(tmp_path: Path) -> None:
    digest, data = make_chunk(10_000, random.Random(5))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest, data)
        assert cache.read(digest) == data
        before = sum(metric_value(DISCARDED, reason=r) for r in ("digest_mismatch", "size_changed"))
        path = chunk_path(tmp_path, digest)
        os.utime(path, ns=(1, 1))
        assert cache.read(digest, 5, 10) == data[5:15]  # hashed again, then served
        assert cache.read(digest) == data
        assert path.exists()
        after = sum(metric_value(DISCARDED, reason=r) for r in ("digest_mismatch", "size_changed"))
        assert after == before


def test_bytes_flipped_across_a_restart_are_never_served(tmp_path: Path) -> None:
    digest, data = make_chunk(40_000, random.Random(6))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest, data)
    _flip(chunk_path(tmp_path, digest), 123)
    before = metric_value(DISCARDED, reason="digest_mismatch")
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.contains(digest)  # indexed at start, not hashed yet
        assert cache.read(digest, 30_000, 100) is None
        assert not chunk_path(tmp_path, digest).exists()
        assert metric_value(DISCARDED, reason="digest_mismatch") == before + 1
