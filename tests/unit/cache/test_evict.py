"""The cap and LRU eviction: never above capacity, least recently used first, pins respected."""

from __future__ import annotations

import gc
import random
import tracemalloc
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache
from lazyimage.cache._digest import chunk_key
from lazyimage.cache._evict import Entry, LruIndex

from tests.unit.cache.helpers import digest_of, make_chunk, metric_value, stored_files


def _chunks(n: int, size: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [make_chunk(size, rng) for _ in range(n)]


@pytest.mark.timeout(10)
def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    a, b, c, d = _chunks(4, 1000, seed=1)
    with ChunkCache(tmp_path, 3000) as cache:
        for digest, data in (a, b, c):
            assert cache.put(digest, data)
        assert cache.read(a[0], 0, 1) is not None  # a is now the most recent
        assert cache.put(*d)
        assert set(stored_files(tmp_path)) == {a[0], c[0], d[0]}  # (contains counts as use)
        assert cache.put(b[0], b[1])  # c is now the oldest
        assert set(stored_files(tmp_path)) == {a[0], b[0], d[0]}
        assert cache.stats().evictions == 2


@pytest.mark.timeout(10)
def test_asking_for_a_stored_chunk_counts_as_use(tmp_path: Path) -> None:
    """A fill that finds a chunk another image brought keeps it, as it would its own."""
    a, b, c = _chunks(3, 1000, seed=3)
    with ChunkCache(tmp_path, 2000) as cache:
        cache.put(*a)
        cache.put(*b)
        assert cache.contains(a[0])
        cache.put(*c)
    assert set(stored_files(tmp_path)) == {a[0], c[0]}


@pytest.mark.timeout(10)
def test_put_of_a_stored_chunk_counts_as_use(tmp_path: Path) -> None:
    a, b, c = _chunks(3, 1000, seed=2)
    with ChunkCache(tmp_path, 2000) as cache:
        cache.put(*a)
        cache.put(*b)
        cache.put(*a)
        cache.put(*c)
        assert cache.contains(a[0])
        assert not cache.contains(b[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(4))
def test_cap_is_never_exceeded(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    capacity = 200_000
    pool = [make_chunk(rng.choice([0, 1, 4096, rng.randrange(1, 80_000)]), rng) for _ in range(60)]
    before = metric_value("lazyimage_cache_evictions_total")
    with ChunkCache(tmp_path, capacity) as cache:
        for _ in range(400):
            digest, data = rng.choice(pool)
            if rng.random() < 0.6:
                assert cache.put(digest, data)  # all fit alone, nothing is pinned
                assert cache.read(digest) == data  # just put: the most recent, not evicted
            else:
                got = cache.read(digest)
                assert got is None or got == data
            stats = cache.stats()
            on_disk = stored_files(tmp_path)
            assert stats.bytes <= capacity
            assert stats.bytes == sum(on_disk.values())
            assert stats.chunks == len(on_disk)
            assert metric_value("lazyimage_cache_bytes") == stats.bytes
            assert metric_value("lazyimage_cache_chunks") == stats.chunks
        assert stats.evictions > 0
        assert metric_value("lazyimage_cache_evictions_total") - before == stats.evictions


@pytest.mark.timeout(10)
def test_chunk_bigger_than_capacity_is_refused(tmp_path: Path) -> None:
    small, big = make_chunk(100, random.Random(3)), make_chunk(1001, random.Random(4))
    with ChunkCache(tmp_path, 1000) as cache:
        assert cache.put(*small)
        assert not cache.put(*big)
        assert cache.read(big[0]) is None
        assert cache.contains(small[0])  # nothing was evicted for a chunk that cannot fit
        assert cache.stats().evictions == 0
    assert set(stored_files(tmp_path)) == {small[0]}


@pytest.mark.timeout(10)
def test_zero_capacity_caches_nothing(tmp_path: Path) -> None:
    with ChunkCache(tmp_path, 0) as cache:
        assert not cache.put(digest_of(b"x"), b"x")
        assert cache.put(digest_of(b""), b"")  # an empty chunk takes no bytes
    assert set(stored_files(tmp_path)) == {digest_of(b"")}


@pytest.mark.timeout(10)
def test_pinned_chunks_survive_eviction(tmp_path: Path) -> None:
    a, b, c, d = _chunks(4, 1000, seed=5)
    with ChunkCache(tmp_path, 2000) as cache:
        cache.put(*a)
        cache.put(*b)
        with cache.pinned([a[0]]):
            assert cache.put(*c)  # evicts b, the only unpinned one
            assert cache.contains(a[0])
            assert not cache.contains(b[0])
            with cache.pinned([c[0]]), cache.pinned([a[0]]):
                assert not cache.put(*d)  # everything is pinned: not cached, nothing evicted
                assert cache.read(a[0]) == a[1]
                assert cache.read(c[0]) == c[1]
            # the inner pin on a is gone, the outer one still holds
            assert cache.put(*d)  # evicts c
            assert set(stored_files(tmp_path)) == {a[0], d[0]}
        assert cache.put(*b)  # a is unpinned and the oldest
        assert not cache.contains(a[0])
        assert cache.stats().bytes <= 2000


@pytest.mark.timeout(10)
def test_pin_before_put(tmp_path: Path) -> None:
    a, b, c = _chunks(3, 1000, seed=6)
    with ChunkCache(tmp_path, 2000) as cache, cache.pinned([a[0], b[0]]):
        assert cache.put(*a)
        assert cache.put(*b)
        assert not cache.put(*c)
        assert cache.read(a[0]) == a[1]
        assert cache.read(b[0]) == b[1]


@pytest.mark.timeout(10)
def test_index_refusal_changes_nothing() -> None:
    index = LruIndex(100)
    index.add("a", Entry(40, verified=True))
    index.add("b", Entry(40, verified=True))
    index.pin(["a"])
    assert index.make_room(80) is None
    assert ("a" in index, "b" in index, index.used, index.evictions) == (True, True, 80, 0)
    index.unpin(["a"])
    assert not index.is_pinned("a")
    assert index.make_room(101) is None


@pytest.mark.timeout(10)
def test_index_used_stays_within_capacity_while_victims_are_unlinked() -> None:
    index = LruIndex(100)
    index.add("a", Entry(30, verified=True))
    index.add("b", Entry(50, verified=True))
    index.pin(["b"])
    reservation = index.make_room(60)  # needs 40: evicts a (30)? not enough, b is pinned
    assert reservation is None
    index.unpin(["b"])
    reservation = index.make_room(60)
    assert reservation is not None
    assert reservation.victims == ["a", "b"]
    assert index.used == 80  # a and b still on disk; the 60 wait for their unlink
    assert len(index) == 0
    index.unlinked(reservation.victims, reservation)
    assert index.used == 60
    index.commit("c", reservation)
    assert index.used == 60 and "c" in index
    other = index.make_room(30)
    assert other is not None and other.victims == []
    assert index.used == 90
    index.unreserve(other)
    assert index.used == 60


@pytest.mark.timeout(60)
def test_the_index_takes_under_200_bytes_a_chunk() -> None:
    """A node caches hundreds of thousands of chunks; their bookkeeping must stay small."""
    count = 100_000
    digests = [digest_of(b"%d" % i) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        index = LruIndex(1 << 40)
        for digest in digests:
            index.add(chunk_key(digest), Entry(1000, verified=True))
        for digest in digests[::2]:
            index.touch(chunk_key(digest))
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == count
    assert size / count < 200, f"{size / count:.0f} bytes a chunk"
