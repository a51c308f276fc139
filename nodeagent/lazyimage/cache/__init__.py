"""The on-disk chunk cache: verified, uncompressed chunks keyed by digest, stored once.

    cache = ChunkCache(state_dir / "cache", capacity=10 << 30)
    if cache.put(chunk.digest, verified_bytes): ...
    data = cache.read(chunk.digest, offset, length)   # None: a miss, fetch it
    with cache.pinned(digests): ...                   # not evicted while a read needs them

Layout: ``ROOT/sha256/ab/<64 hex>``. Writes are crash-safe (temp file, fsync, rename);
files found at start, and files changed on disk since they were written (a stamp check per
read), are hashed before they are served and deleted if they do not match their name.

Every method is thread-safe. ``read``, ``put`` and the constructor do file I/O (and the first
read of a file found at start hashes it), so call them from worker threads; ``contains``,
``pinned`` and ``stats`` only take a short in-memory lock.

``TOCStore`` keeps layers' TOCs by TOC digest next to it, so a layer seen before opens
without a request.
"""

from lazyimage.cache._cache import CacheStats, ChunkCache
from lazyimage.cache._tocs import StoredTOC, TOCStore

__all__ = ["CacheStats", "ChunkCache", "StoredTOC", "TOCStore"]
