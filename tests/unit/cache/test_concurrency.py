"""Many threads putting, reading and pinning at once: every read is right or a miss."""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache

from tests.unit.cache.helpers import make_chunk, stored_files, temp_files


@pytest.mark.timeout(120)
@pytest.mark.parametrize("open_files", [2, 64])
def test_eight_threads_stay_consistent(tmp_path: Path, open_files: int) -> None:
    rng = random.Random(1)
    pool = [make_chunk(rng.randrange(1, 48_000), rng) for _ in range(40)]
    capacity = 256_000
    cache = ChunkCache(tmp_path, capacity, open_files=open_files)
    start = threading.Barrier(8)
    outcomes = {"hit": 0, "miss": 0, "stored": 0, "refused": 0}
    count_lock = threading.Lock()

    def count(what: str) -> None:
        with count_lock:
            outcomes[what] += 1

    def worker(seed: int) -> None:
        wrng = random.Random(seed)
        start.wait()
        for _ in range(400):
            digest, data = wrng.choice(pool)
            roll = wrng.random()
            if roll < 0.35:
                stored = cache.put(digest, data)
                count("stored" if stored else "refused")
                assert cache.stats().bytes <= capacity
            elif roll < 0.85:
                offset = wrng.randrange(len(data))
                length = wrng.choice([None, 1, 4096, 100_000])
                got = cache.read(digest, offset, length)
                end = len(data) if length is None else offset + length
                assert got is None or got == data[offset:end]
                count("miss" if got is None else "hit")
            else:
                with cache.pinned([digest]):
                    if cache.put(digest, data):
                        # pinned and stored: no other thread can evict it now
                        assert cache.read(digest) == data
                        assert cache.contains(digest)

    try:
        with ThreadPoolExecutor(8) as executor:
            for future in [executor.submit(worker, seed) for seed in range(8)]:
                future.result()
        stats = cache.stats()
    finally:
        cache.close()
    on_disk = stored_files(tmp_path)
    assert stats.bytes <= capacity
    assert stats.bytes == sum(on_disk.values())
    assert stats.chunks == len(on_disk)
    assert temp_files(tmp_path) == []
    for digest in on_disk:
        hexdigest = digest.removeprefix("sha256:")
        path = tmp_path / "sha256" / hexdigest[:2] / hexdigest
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hexdigest
    # the mix really exercised hits, misses and evictions
    assert outcomes["hit"] > 100 and outcomes["miss"] > 10 and outcomes["stored"] > 100
    assert stats.evictions > 50


@pytest.mark.timeout(60)
def test_concurrent_puts_of_one_chunk_write_it_once(tmp_path: Path) -> None:
    digest, data = make_chunk(4 << 20, random.Random(2))
    with ChunkCache(tmp_path, 1 << 24) as cache:
        barrier = threading.Barrier(8)

        def put() -> bool:
            barrier.wait()
            return cache.put(digest, data)

        with ThreadPoolExecutor(8) as executor:
            results = list(executor.map(lambda _: put(), range(8)))
        assert results == [True] * 8
        assert cache.stats().chunks == 1
        assert cache.stats().bytes == 4 << 20
        assert cache.read(digest) == data
    assert stored_files(tmp_path) == {digest: 4 << 20}
    assert temp_files(tmp_path) == []
