"""Open fds: bounded, never left on evicted files, never reused under a reader."""

from __future__ import annotations

import os
import random
import resource
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache
from lazyimage.cache._cache import DEFAULT_OPEN_FILES, _open_files_within_limit
from lazyimage.cache._fds import FdTable

from tests.unit.cache.helpers import make_chunk


def _fds_under(root: Path) -> list[str]:
    """Targets of this process's open fds that point into ``root``."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(root / "sha256")):
            targets.append(target)
    return targets


@pytest.mark.timeout(20)
def test_open_fds_are_bounded(tmp_path: Path) -> None:
    rng = random.Random(1)
    chunks = [make_chunk(1000, rng) for _ in range(100)]
    with ChunkCache(tmp_path, 1 << 20, open_files=8) as cache:
        for digest, data in chunks:
            cache.put(digest, data)
        for digest, data in chunks:
            assert cache.read(digest, 10, 10) == data[10:20]
            assert len(_fds_under(tmp_path)) <= 8
        assert len(_fds_under(tmp_path)) == 8
    assert _fds_under(tmp_path) == []


@pytest.mark.timeout(20)
def test_evicted_chunks_keep_no_fd_and_read_as_misses(tmp_path: Path) -> None:
    rng = random.Random(2)
    chunks = [make_chunk(1000, rng) for _ in range(30)]
    with ChunkCache(tmp_path, 5000, open_files=16) as cache:
        for digest, data in chunks:
            assert cache.put(digest, data)
            assert cache.read(digest) == data  # leaves an fd on it in the table
        assert not any(t.endswith(" (deleted)") for t in _fds_under(tmp_path))
        # Open and close plenty of other files, so fd numbers of evicted chunks get reused.
        scratch = [os.open(tmp_path, os.O_RDONLY) for _ in range(32)]
        for fd in scratch:
            os.close(fd)
        for digest, data in chunks:
            got = cache.read(digest)
            assert got is None or got == data
        assert sum(cache.read(d) is not None for d, _ in chunks) == 5


@pytest.mark.timeout(10)
def test_fd_table_closes_only_after_the_last_release() -> None:
    table = FdTable(limit=1)
    to_close: list[int] = []
    a = table.adopt("a", 100, to_close)
    again = table.borrow("a")
    assert again is a and a.refs == 2
    b = table.adopt("b", 101, to_close)  # pushes a out of the table, but a is borrowed
    assert to_close == []
    assert table.borrow("a") is None
    table.release(a, to_close)
    assert to_close == []
    table.release(a, to_close)
    assert to_close == [100]
    table.drop("b", to_close)  # b is still borrowed
    assert to_close == [100]
    table.release(b, to_close)
    assert to_close == [100, 101]


@pytest.mark.timeout(10)
def test_fd_table_race_keeps_the_first_fd() -> None:
    table = FdTable(limit=4)
    to_close: list[int] = []
    first = table.adopt("a", 7, to_close)
    second = table.adopt("a", 8, to_close)
    assert second is first and first.refs == 2
    assert to_close == [8]
    table.drop_all(to_close)
    assert to_close == [8]
    table.release(first, to_close)
    table.release(first, to_close)
    assert to_close == [8, 7]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("soft", "kept"), [(1024, 256), (40, 16)])
def test_by_default_a_quarter_of_the_fd_limit_stays_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, soft: int, kept: int
) -> None:
    """Enough fds for a container start's few hundred chunks to be read again without an
    open each, within the process's limit."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))
    rng = random.Random(3)
    chunks = [make_chunk(100, rng) for _ in range(kept + 10)]
    with ChunkCache(tmp_path, 1 << 20) as cache:
        for digest, data in chunks:
            assert cache.put(digest, data)
            assert cache.read(digest) == data
        assert len(_fds_under(tmp_path)) == kept


@pytest.mark.parametrize("soft", [20000, resource.RLIM_INFINITY])
def test_the_default_stops_at_its_cap(monkeypatch: pytest.MonkeyPatch, soft: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))
    assert _open_files_within_limit() == DEFAULT_OPEN_FILES
