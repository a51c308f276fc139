"""The cache on a real 1 MiB tmpfs: a full disk refuses chunks cleanly and breaks no read."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache
from structlog.testing import capture_logs

from tests.unit.cache.helpers import make_chunk, metric_value, stored_files, temp_files

pytestmark = pytest.mark.integration

ENOSPC_ERRORS = "lazyimage_cache_write_errors_total"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.timeout(60)
def test_full_disk_refuses_chunks_and_keeps_serving(tiny_fs: Path) -> None:
    rng = random.Random(1)
    root = tiny_fs / "cache"
    before = metric_value(ENOSPC_ERRORS, errno="ENOSPC")
    stored: list[tuple[str, bytes]] = []
    refused = 0
    with ChunkCache(root, 8 << 20) as cache, capture_logs() as logs:
        for _ in range(40):
            digest, data = make_chunk(60_000, rng)
            if cache.put(digest, data):
                assert refused == 0, "stored a chunk after the disk was full"
                stored.append((digest, data))
            else:
                refused += 1
            assert temp_files(root) == []
            stats = cache.stats()
            assert stats.bytes == sum(stored_files(root).values())
            assert stats.bytes <= stats.capacity
        assert 10 <= len(stored) <= 17  # 1 MiB holds about 16 of them
        assert refused == 40 - len(stored)
        for digest, data in stored:
            assert cache.read(digest) == data
            assert cache.read(digest, 1000, 4096) == data[1000:5096]
        assert cache.stats().chunks == len(stored)
    assert metric_value(ENOSPC_ERRORS, errno="ENOSPC") - before == refused
    failures = [e for e in logs if e["event"] == "cache.write_failed"]
    assert [e["errno"] for e in failures] == ["ENOSPC"]  # logged once, not per chunk
    assert failures[0]["suppressed_since_last"] == 0

    # A restart on the full disk keeps every chunk, and each passes its check.
    with ChunkCache(root, 8 << 20) as cache:
        assert cache.stats().chunks == len(stored)
        for digest, data in stored:
            assert cache.read(digest) == data
    assert temp_files(root) == []


@pytest.mark.timeout(60)
def test_chunk_larger_than_the_disk_leaves_no_trace(tiny_fs: Path) -> None:
    rng = random.Random(2)
    root = tiny_fs / "cache"
    big = make_chunk(4 << 20, rng)
    small = make_chunk(500_000, rng)
    before = metric_value(ENOSPC_ERRORS, errno="ENOSPC")
    with ChunkCache(root, 64 << 20) as cache:
        free_before = _used_bytes(tiny_fs)
        assert not cache.put(*big)
        assert temp_files(root) == []
        assert _used_bytes(tiny_fs) == free_before  # the partial temp file's space is back
        assert cache.stats().bytes == 0
        assert cache.put(*small)
        assert cache.read(small[0]) == small[1]
    assert metric_value(ENOSPC_ERRORS, errno="ENOSPC") - before == 1


@pytest.mark.timeout(60)
def test_cap_below_disk_size_holds_on_the_real_disk(tiny_fs: Path) -> None:
    rng = random.Random(3)
    root = tiny_fs / "cache"
    capacity = 600_000
    with ChunkCache(root, capacity) as cache:
        baseline = _used_bytes(tiny_fs)
        for _ in range(150):
            digest, data = make_chunk(rng.randrange(1, 70_000), rng)
            assert cache.put(digest, data)
            # tmpfs rounds each file up to a page
            pages = sum(-(-size // 4096) * 4096 for size in stored_files(root).values())
            assert _used_bytes(tiny_fs) - baseline == pages
            assert cache.stats().bytes <= capacity
            assert cache.read(digest) == data
        assert cache.stats().evictions > 50
