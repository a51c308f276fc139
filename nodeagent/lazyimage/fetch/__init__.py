"""The fetch scheduler: verified chunks of remote layers, fetched once, in merged ranges.

    gate, writer = PriorityGate(), CacheWriter()    # one of each for the whole process
    source = RegistrySource(client, ref, layer.digest, layer.size, stall_timeout=2.0)
    fetcher = LayerFetcher(source, cache, layer.digest, FetchConfig(), bucket,
                           gate=gate, writer=writer)
    data = await fetcher.read(toc.chunks_for_range(node, offset, size))
    await fetcher.prefetch(chunks_in_zone)          # into the cache, bandwidth-capped

On-demand reads come first; prefetch and background fill wait while demand is queued or in
flight on any layer that shares their PriorityGate, and share one TokenBucket. The cache
writes that demand reads do not wait for run on the shared CacheWriter's threads.
Concurrent reads of a chunk share one fetch. Every byte handed out or cached was verified
against its chunk digest.
"""

from lazyimage.fetch._bandwidth import TokenBucket
from lazyimage.fetch._config import ChunkStore, FetchConfig, read_retry_policy
from lazyimage.fetch._fetcher import LayerFetcher
from lazyimage.fetch._scheduler import Priority, PriorityGate
from lazyimage.fetch._source import RangeSource, RegistrySource
from lazyimage.fetch._writer import CacheWriter

__all__ = [
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
]
