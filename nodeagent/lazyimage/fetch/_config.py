"""The fetcher's settings, and what it needs of the chunk cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lazyimage.retry import RetryPolicy

__all__ = ["ChunkStore", "FetchConfig", "ResidentReads", "read_retry_policy"]

# A failing range read's retries, 0.2, 0.4, 0.8, 1.6 s and then 2 s apart (each drawn from
# [d/2, d]), would fit 20 to 30 attempts in a 30 s deadline: at most this many are made.
_READ_ATTEMPTS = 24


class ChunkStore(Protocol):
    """What the fetcher needs of the chunk cache (lazyimage.cache.ChunkCache). ``read`` and
    ``put`` are called from worker threads and ``contains`` on the event loop: the store
    must be thread-safe, and ``contains`` must not do I/O. ``contains`` marks a stored chunk
    as used (the fetcher asks when a reader or a fill needs the chunk)."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes | None: ...

    def contains(self, digest: str) -> bool: ...

    def put(self, digest: str, data: bytes) -> bool: ...


@runtime_checkable
class ResidentReads(Protocol):
    """A ChunkStore that can also read without waiting for the disk (ChunkCache does):
    ``read_resident`` answers None unless the bytes are in memory, so the event loop may
    call it and skip the hop to a worker thread."""

    def read_resident(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> bytes | None: ...


@dataclass(frozen=True)
class FetchConfig:
    """How one layer is fetched. ``stall_timeout`` is for the layer's RegistrySource, which
    checks a request's progress byte by byte; the fetcher itself passes each request a
    deadline ``demand_deadline`` away and retries nothing but a failed verification."""

    stall_timeout: float = 2.0  # a range request with no progress for this long is retried
    # A demand read not served by then raises UnavailableError; each range request's source
    # retries until this long after it was asked for.
    demand_deadline: float = 30.0
    max_range: int = 16 << 20  # merged ranges are at most this big
    # A prefetch (a priority zone, a profile's files) goes in ranges of at most this size,
    # several at once: over a slow link one TCP stream fills a fraction of it, several fill
    # it, and each holds less memory while it is verified.
    prefetch_range: int = 1 << 20
    # A prefetch whose chunks span this much of the blob or more is a large working set (a
    # model's weights): it goes in ranges of max_range, fewer at once, which costs fewer
    # requests for the same bytes and holds no more memory.
    bulk_prefetch: int = 64 << 20
    max_requests: int = 8  # concurrent range requests per layer
    merge_gap: int = 64 << 10  # chunks this close in the blob share a request
    # A demand miss also fetches the files that follow it in its directory, in the same
    # request while it stays within this many compressed bytes, and while the read-ahead not
    # read yet (or lost) stays within read_ahead_ratio of the bytes readers asked for.
    read_ahead: int = 64 << 10
    read_ahead_ratio: float = 0.15
    # Background fill starts a range only after on-demand reads and prefetch were idle this
    # long (and not before this long after the fill began), so it stays out of a starting
    # workload's way; and its ranges are short, so a read that needs one of them, or the
    # link, waits little.
    background_quiet: float = 2.0
    background_range: int = 2 << 20

    def __post_init__(self) -> None:
        if not self.stall_timeout > 0 or not self.demand_deadline > 0:
            raise ValueError("stall_timeout and demand_deadline must be positive")
        if self.background_quiet < 0 or self.background_range <= 0:
            raise ValueError("background_quiet must be >= 0 and background_range positive")
        if self.max_range <= 0 or self.max_requests <= 0 or self.merge_gap < 0:
            raise ValueError("max_range and max_requests must be positive, merge_gap >= 0")
        if self.prefetch_range <= 0 or self.bulk_prefetch <= 0:
            raise ValueError("prefetch_range and bulk_prefetch must be positive")
        if self.read_ahead < 0 or self.read_ahead_ratio < 0:
            raise ValueError("read_ahead and read_ahead_ratio must be >= 0")


def read_retry_policy(config: FetchConfig) -> RetryPolicy:
    """The RetryPolicy for the RegistryClient that a layer's reads go through.

    Lazy reads retry in one place, the registry client, and only until the deadline each
    request carries (``demand_deadline`` after it was asked for): briefly apart at first, so
    that a blip costs little, and at most 2 s apart, so that a registry that comes back is
    found soon.
    """
    return RetryPolicy(
        attempts=_READ_ATTEMPTS,
        base_delay=0.2,
        max_delay=2.0,
        total_timeout=config.demand_deadline,
    )
