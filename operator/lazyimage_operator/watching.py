"""What the operator's own watches (of pods, of Nodes) share: where their events come from, and
how long one keeps failing before it ends."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from lazyimage.kube import ResourcePath, WatchEvent

__all__ = ["WATCH_PATIENCE", "CollectionSource"]

# Failures in a row (with the client's backoff, about 20 s) after which the watch ends and the
# supervisor counts it: so a watch that cannot work shows in the probe, not only in the log.
WATCH_PATIENCE = 5


class CollectionSource(Protocol):
    """Where watch events come from: ``lazyimage.kube.KubeClient``, or a test's fake."""

    def watch_collection(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        max_failures: int | None = None,
    ) -> AsyncGenerator[WatchEvent, None]: ...
