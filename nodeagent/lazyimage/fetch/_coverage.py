"""How much of a layer is fetched or cached: the layer's fetched-ratio metric."""

from __future__ import annotations

import threading

from lazyimage import metrics
from lazyimage.fetch._ranges import ByteRange

__all__ = ["Coverage"]


class Coverage:
    """The gzip members of one layer seen fetched or cached, each counted once. Called on
    the event loop and from worker threads, hence the lock."""

    def __init__(self, layer: str, blob_size: int) -> None:
        self._layer = layer
        self._blob_size = blob_size
        self._lock = threading.Lock()
        self._members: set[int] = set()  # by offset
        self._bytes = 0

    def add(self, member: ByteRange) -> None:
        with self._lock:
            if member.offset in self._members:
                return
            self._members.add(member.offset)
            self._bytes += member.length
            covered = self._bytes
        if self._blob_size > 0:
            ratio = min(1.0, covered / self._blob_size)
            metrics.LAYER_FETCHED_RATIO.labels(self._layer).set(ratio)
