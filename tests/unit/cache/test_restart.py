"""A new ChunkCache on the same root: what it keeps, what it checks, what it throws away."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache
from lazyimage.cache._cache import ChunkCache as ChunkCacheImpl

from tests.unit.cache.helpers import chunk_path, make_chunk, stored_files, temp_files


def _fill(root: Path, n: int, size: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    chunks = [make_chunk(size, rng) for _ in range(n)]
    with ChunkCache(root, 1 << 24) as cache:
        for digest, data in chunks:
            assert cache.put(digest, data)
    return chunks


class _CheckCounter:
    """Counts how often the cache hashes a file found on disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        original = ChunkCacheImpl._check_file

        def counted(cache: ChunkCacheImpl, key: str, entry: object) -> object:
            with self._lock:
                self.calls += 1
            return original(cache, key, entry)  # type: ignore[arg-type]

        monkeypatch.setattr(ChunkCacheImpl, "_check_file", counted)


@pytest.mark.timeout(10)
def test_restart_keeps_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = _fill(tmp_path, 5, 70_000, seed=1)
    checks = _CheckCounter(monkeypatch)
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.stats().chunks == 5
        assert cache.stats().bytes == 5 * 70_000
        assert checks.calls == 0  # nothing is hashed at start
        for digest, data in chunks:
            assert cache.contains(digest)
            assert cache.read(digest, 100, 1000) == data[100:1100]
        assert checks.calls == 5
        for digest, data in chunks:
            assert cache.read(digest) == data
        assert checks.calls == 5  # once verified, reads are free


@pytest.mark.timeout(10)
def test_chunks_put_by_this_process_are_not_rehashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = _CheckCounter(monkeypatch)
    digest, data = make_chunk(10_000, random.Random(2))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        cache.put(digest, data)
        assert cache.read(digest) == data
    assert checks.calls == 0


def _tamper_flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _tamper_truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


def _tamper_empty(path: Path) -> None:
    os.truncate(path, 0)


def _tamper_extend(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0")


def _tamper_swap(path: Path) -> None:
    # a valid chunk of some other digest, under this name
    path.write_bytes(random.Random(99).randbytes(path.stat().st_size))


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "tamper", [_tamper_flip, _tamper_truncate, _tamper_empty, _tamper_extend, _tamper_swap]
)
def test_tampered_file_is_detected_on_first_read(tmp_path: Path, tamper: object) -> None:
    chunks = _fill(tmp_path, 3, 50_000, seed=3)
    victim, data = chunks[1]
    tamper(chunk_path(tmp_path, victim))  # type: ignore[operator]
    with ChunkCache(tmp_path, 1 << 24) as cache:
        assert cache.contains(victim)  # not known to be bad until read
        assert cache.read(victim, 0, 10) is None  # even a read of a good prefix misses
        assert not chunk_path(tmp_path, victim).exists()
        assert not cache.contains(victim)
        assert cache.read(victim) is None
        assert cache.stats().chunks == 2
        assert cache.stats().bytes == 100_000
        assert cache.stats().evictions == 0
        for digest, good in (chunks[0], chunks[2]):
            assert cache.read(digest) == good
        assert cache.put(victim, data)  # the caller re-fetches it
        assert cache.read(victim) == data


@pytest.mark.timeout(20)
def test_concurrent_first_reads_hash_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ((digest, data),) = _fill(tmp_path, 1, 4 << 20, seed=4)
    checks = _CheckCounter(monkeypatch)
    with ChunkCache(tmp_path, 1 << 24) as cache:
        barrier = threading.Barrier(8)
        results: list[bytes | None] = [None] * 8

        def reader(i: int) -> None:
            barrier.wait()
            results[i] = cache.read(digest, i << 17, 1 << 17)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [data[i << 17 : (i + 1) << 17] for i in range(8)]
    assert checks.calls == 1


@pytest.mark.timeout(20)
def test_concurrent_first_reads_of_a_bad_file_all_miss(tmp_path: Path) -> None:
    ((digest, _),) = _fill(tmp_path, 1, 4 << 20, seed=5)
    _tamper_flip(chunk_path(tmp_path, digest))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        barrier = threading.Barrier(8)
        results: list[bytes | None] = [b"unset"] * 8

        def reader(i: int) -> None:
            barrier.wait()
            results[i] = cache.read(digest, i, 100)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [None] * 8
    assert stored_files(tmp_path) == {}


@pytest.mark.timeout(10)
def test_leftovers_are_removed_at_start(tmp_path: Path) -> None:
    chunks = _fill(tmp_path, 2, 1000, seed=6)
    fanout = chunk_path(tmp_path, chunks[0][0]).parent
    (fanout / ".tmp-0123456789abcdef").write_bytes(b"torn")
    (tmp_path / "sha256" / "00" / ".tmp-x").write_bytes(b"")
    (fanout / "junk").write_bytes(b"junk")
    misplaced = "ff" + chunks[0][0][9:]  # a chunk name in the wrong fan-out dir
    (tmp_path / "sha256" / "00" / misplaced).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    link_name = "ab" + "0" * 62
    (tmp_path / "sha256" / "ab" / link_name).symlink_to(outside)
    (tmp_path / "sha256" / "ab" / "subdir").mkdir()
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.stats().chunks == 2
        assert cache.stats().bytes == 2000
        assert cache.read("sha256:" + link_name) is None
    assert temp_files(tmp_path) == []
    assert set(stored_files(tmp_path)) == {d for d, _ in chunks} | {"sha256:subdir"}
    assert outside.read_bytes() == b"keep me"  # a symlink is removed, never followed


@pytest.mark.timeout(10)
def test_start_evicts_oldest_mtime_down_to_a_smaller_cap(tmp_path: Path) -> None:
    chunks = _fill(tmp_path, 4, 1000, seed=7)
    base = 1_700_000_000 * 10**9
    for age, (digest, _) in zip([3, 1, 4, 2], chunks, strict=True):
        os.utime(chunk_path(tmp_path, digest), ns=(base + age, base + age))
    # LRU order from mtime: chunks[1], chunks[3], chunks[0], chunks[2]
    with ChunkCache(tmp_path, 2500) as cache:
        assert cache.stats().chunks == 2
        assert cache.stats().evictions == 2
        assert [cache.contains(d) for d, _ in chunks] == [True, False, True, False]
        assert cache.put(*make_chunk(1000, random.Random(8)))
        assert not cache.contains(chunks[0][0])  # next oldest by mtime
    assert len(stored_files(tmp_path)) == 2


@pytest.mark.timeout(10)
def test_file_deleted_behind_the_cache_is_a_miss(tmp_path: Path) -> None:
    digest, data = make_chunk(1000, random.Random(9))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        cache.put(digest, data)
        chunk_path(tmp_path, digest).unlink()
        assert cache.read(digest) is None
        assert not cache.contains(digest)
        assert cache.stats().bytes == 0
        assert cache.put(digest, data)
        assert cache.read(digest) == data


@pytest.mark.timeout(10)
def test_file_truncated_after_check_is_never_served_short(tmp_path: Path) -> None:
    digest, data = make_chunk(10_000, random.Random(10))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        cache.put(digest, data)
        assert cache.read(digest) == data
        os.truncate(chunk_path(tmp_path, digest), 5000)
        # Even the bytes still there are not served from a file known to be torn.
        assert cache.read(digest, 0, 100) is None
        assert not cache.contains(digest)
        assert not chunk_path(tmp_path, digest).exists()
