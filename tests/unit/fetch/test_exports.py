"""The public surface changes only on purpose."""

from __future__ import annotations

import lazyimage.fetch as fetch


def test_exports() -> None:
    assert fetch.__all__ == sorted(fetch.__all__)
    assert set(fetch.__all__) == {
        "CacheWriter",
        "ChunkStore",
        "FetchConfig",
        "LayerFetcher",
        "Priority",
        "PriorityGate",
        "RangeSource",
        "RegistrySource",
        "TokenBucket",
        "read_retry_policy",
    }
    for name in fetch.__all__:
        assert getattr(fetch, name).__module__.startswith("lazyimage.fetch._")
