"""Storing and reading chunks: ranges, dedup, digest validation, the public surface."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lazyimage import cache as cache_pkg
from lazyimage.cache import CacheStats, ChunkCache

from tests.unit.cache.helpers import chunk_path, digest_of, make_chunk, stored_files, temp_files


@pytest.mark.timeout(10)
def test_exports() -> None:
    assert cache_pkg.__all__ == sorted(cache_pkg.__all__)
    assert set(cache_pkg.__all__) == {"CacheStats", "ChunkCache", "StoredTOC", "TOCStore"}
    for name in cache_pkg.__all__:
        assert getattr(cache_pkg, name).__module__.startswith("lazyimage.cache._")


@pytest.mark.timeout(10)
def test_put_then_read_whole_and_ranges(tmp_path: Path) -> None:
    digest, data = make_chunk(300_000, random.Random(1))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.read(digest) is None
        assert not cache.contains(digest)
        assert cache.put(digest, data)
        assert cache.contains(digest)
        assert cache.read(digest) == data
        assert cache.read(digest, 0, 0) == b""
        assert cache.read(digest, 12_345, 128 << 10) == data[12_345 : 12_345 + (128 << 10)]
        assert cache.read(digest, 299_990) == data[299_990:]
        assert cache.read(digest, 299_990, 100) == data[299_990:]  # short at the end
        assert cache.read(digest, 400_000, 10) == b""  # a hit, past the end
        assert cache.stats() == CacheStats(bytes=300_000, chunks=1, capacity=1 << 20, evictions=0)
    assert chunk_path(tmp_path, digest).read_bytes() == data


@pytest.mark.timeout(10)
def test_put_accepts_bytearray_and_memoryview(tmp_path: Path) -> None:
    rng = random.Random(2)
    a, b = rng.randbytes(1000), rng.randbytes(2000)
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest_of(a), bytearray(a))
        assert cache.put(digest_of(b), memoryview(b"xx" + b)[2:])
        assert cache.read(digest_of(a)) == a
        assert cache.read(digest_of(b)) == b


@pytest.mark.timeout(10)
def test_empty_chunk(tmp_path: Path) -> None:
    with ChunkCache(tmp_path, 100) as cache:
        assert cache.put(digest_of(b""), b"")
        assert cache.read(digest_of(b"")) == b""


@pytest.mark.timeout(10)
def test_same_digest_twice_is_stored_once(tmp_path: Path) -> None:
    digest, data = make_chunk(50_000, random.Random(3))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(digest, data)
        mtime = chunk_path(tmp_path, digest).stat().st_mtime_ns
        assert cache.put(digest, data)
        assert cache.stats().chunks == 1
        assert cache.stats().bytes == 50_000
        assert chunk_path(tmp_path, digest).stat().st_mtime_ns == mtime  # not rewritten
    assert stored_files(tmp_path) == {digest: 50_000}
    assert temp_files(tmp_path) == []


BAD_DIGESTS = [
    "",
    "sha256:",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "sha512:" + "a" * 64,
    "SHA256:" + "a" * 64,
    "a" * 64,
    "sha256:" + "a" * 63 + "\n",
    "sha256:" + "a" * 64 + "\n",
    "sha256:../../../../etc/passwd" + "a" * 37,
    "sha256:" + "a" * 62 + "/.",
    "sha256:" + "g" * 64,
    " sha256:" + "a" * 64,
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_bad_digest_strings_raise(tmp_path: Path, digest: str) -> None:
    with ChunkCache(tmp_path, 1 << 20) as cache:
        with pytest.raises(ValueError):
            cache.put(digest, b"x")
        with pytest.raises(ValueError):
            cache.read(digest)
        with pytest.raises(ValueError):
            cache.contains(digest)
        with pytest.raises(ValueError), cache.pinned([digest]):
            pass
    assert stored_files(tmp_path) == {}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", [None, b"sha256:" + b"a" * 64, 7])
def test_non_string_digests_raise(tmp_path: Path, value: object) -> None:
    with ChunkCache(tmp_path, 1 << 20) as cache, pytest.raises(ValueError):
        cache.read(value)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_bad_ranges_raise(tmp_path: Path) -> None:
    digest, data = make_chunk(100, random.Random(4))
    with ChunkCache(tmp_path, 1 << 20) as cache:
        cache.put(digest, data)
        with pytest.raises(ValueError):
            cache.read(digest, -1)
        with pytest.raises(ValueError):
            cache.read(digest, 0, -5)


@pytest.mark.timeout(10)
def test_layout_is_two_level_fanout(tmp_path: Path) -> None:
    digest, data = make_chunk(10, random.Random(5))
    with ChunkCache(tmp_path / "cache", 1 << 20) as cache:
        cache.put(digest, data)
    hexdigest = digest.removeprefix("sha256:")
    assert (tmp_path / "cache" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == data


@pytest.mark.timeout(10)
def test_closed_cache_misses_and_refuses(tmp_path: Path) -> None:
    digest, data = make_chunk(10, random.Random(6))
    cache = ChunkCache(tmp_path, 1 << 20)
    cache.put(digest, data)
    cache.close()
    cache.close()  # idempotent
    assert cache.read(digest) is None
    assert not cache.put(digest_of(b"other"), b"other")
    assert not cache.contains(digest)


@pytest.mark.timeout(10)
def test_one_cache_per_root(tmp_path: Path) -> None:
    with ChunkCache(tmp_path, 1 << 20), pytest.raises(RuntimeError, match="in use"):
        ChunkCache(tmp_path, 1 << 20)
    with ChunkCache(tmp_path, 1 << 20):  # released on close
        pass
