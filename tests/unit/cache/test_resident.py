"""ChunkCache.read_resident: reads that never wait for the disk, or None."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache

from tests.unit.cache.helpers import make_chunk

pytestmark = pytest.mark.timeout(10)


def test_a_chunk_read_once_is_read_again_from_memory(tmp_path: Path) -> None:
    digest, data = make_chunk(300_000, random.Random(1))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.put(digest, data)
        assert cache.read_resident(digest) is None  # no fd open yet: opening may wait
        assert cache.read(digest, 0, 10) == data[:10]  # opens it
        assert cache.read_resident(digest) == data
        assert cache.read_resident(digest, 1000, 5000) == data[1000:6000]
        assert cache.read_resident(digest, 299_990, 100) == data[299_990:]
        assert cache.read_resident(digest, 400_000, 10) == b""
        with pytest.raises(ValueError):
            cache.read_resident(digest, -1, 10)
        assert cache.read_resident("sha256:" + "0" * 64) is None


def test_a_chunk_found_at_start_is_not_read_before_it_is_checked(tmp_path: Path) -> None:
    digest, data = make_chunk(70_000, random.Random(2))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.put(digest, data)
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.read_resident(digest) is None  # hashing it is the slow read's job
        assert cache.read(digest) == data
        assert cache.read_resident(digest) == data


def test_bytes_not_in_memory_are_left_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, data = make_chunk(70_000, random.Random(3))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.put(digest, data)
        assert cache.read(digest) == data

        def would_block(*args: object) -> int:
            raise BlockingIOError(errno.EAGAIN, "not in the page cache")

        monkeypatch.setattr(os, "preadv", would_block)
        assert cache.read_resident(digest) is None
        assert cache.read(digest) == data  # and the chunk is still there


def test_a_filesystem_without_nowait_reads_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, data = make_chunk(70_000, random.Random(4))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.put(digest, data)
        assert cache.read(digest) == data
        calls: list[int] = []

        def unsupported(*args: object) -> int:
            calls.append(1)
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

        monkeypatch.setattr(os, "preadv", unsupported)
        assert cache.read_resident(digest) is None
        assert cache.read_resident(digest) is None
        assert calls == [1]  # not tried again
        assert cache.read(digest) == data


def test_a_closed_cache_reads_nothing(tmp_path: Path) -> None:
    digest, data = make_chunk(1000, random.Random(5))
    cache = ChunkCache(tmp_path, 1 << 24)
    assert cache.put(digest, data)
    assert cache.read(digest) == data
    cache.close()
    assert cache.read_resident(digest) is None
