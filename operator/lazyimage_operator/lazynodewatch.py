"""The operator's watch of LazyImageNodes: it feeds the ``NodeBook``, and hands each node's
reports on (for the startup profiles they carry).

Not kopf: each order the operator writes comes back as an event of this watch, so it is the
operator's busiest one after pods, and kopf spends a per-object worker, its indexing and its
handler machinery on every event; and kopf holds its handlers, at every start, until every
indexed object was seen, with a readiness toggle per object that wakes every object already
waiting (quadratic in the number of nodes). Here an event costs a JSON parse and the book's
update. The book is marked complete once the first list is in; the watch runs under a
``Supervisor`` like the pod watch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from lazyimage.kube import ResourcePath

from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.watching import WATCH_PATIENCE, CollectionSource
from lazyimage_operator.writer import LAZYIMAGE_NODES

__all__ = ["LazyImageNodeSource", "follow_lazyimage_nodes"]

logger = logging.getLogger(__name__)


class LazyImageNodeSource(CollectionSource, Protocol):
    """``lazyimage.kube.KubeClient``, or a test's fake: a watch, and a list to start from."""

    async def list(
        self,
        path: ResourcePath,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]: ...


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("name") or "") if isinstance(metadata, Mapping) else ""


async def follow_lazyimage_nodes(
    source: LazyImageNodeSource,
    book: NodeBook,
    reported: Callable[[str, Mapping[str, Any]], Awaitable[None]],
) -> None:
    """List every LazyImageNode into ``book`` and mark it complete, then keep it up to date
    and call ``reported(name, status)`` for each change of a node whose status has profiles;
    until cancelled or the watch fails (``WATCH_PATIENCE`` failures in a row)."""
    listing = await source.list(LAZYIMAGE_NODES)
    for item in listing.get("items") or []:
        if isinstance(item, dict) and _name(item):
            book.observe(_name(item), item)
    book.mark_listed()
    # The watch lists them again (already known: no change), then follows the changes.
    events = source.watch_collection(LAZYIMAGE_NODES, max_failures=WATCH_PATIENCE)
    async with contextlib.aclosing(events):
        async for event in events:
            name = _name(event.object) if isinstance(event.object, dict) else ""
            if not name:
                continue
            if event.type == "DELETED":
                book.observe(name, None)
            elif event.type in ("ADDED", "MODIFIED"):
                book.observe(name, event.object)
                status = event.object.get("status")
                if isinstance(status, dict) and status.get("profiles"):
                    await reported(name, status)
