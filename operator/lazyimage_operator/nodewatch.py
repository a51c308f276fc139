"""The operator's watch of Nodes: each one's uid (the owner of its LazyImageNode) and labels
(what a LazyImage's nodeSelector matches).

Not a kopf index: kopf holds its handlers until every indexed object was seen, and keeps a
readiness toggle per object meanwhile, each of which wakes every object already waiting; with
a thousand Nodes listed at start that is quadratic, and kept the operator busy for many
seconds after every start, the pod orders of that time waiting behind it. A Node costs a JSON
parse here and two dict updates. The watch runs under a ``Supervisor`` like the pod watch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from lazyimage.kube import ResourcePath

from lazyimage_operator.watching import WATCH_PATIENCE, CollectionSource

__all__ = ["NODES", "NodeDirectory", "follow_nodes"]

NODES = ResourcePath("", "v1", "nodes")


class NodeDirectory:
    """Each Node's uid and labels, as the watch last showed them."""

    def __init__(self) -> None:
        self._uids: dict[str, str] = {}
        self._labels: dict[str, dict[str, str]] = {}

    def see(self, node: Mapping[str, Any]) -> None:
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name") or "")
        if not name:
            return
        uid = metadata.get("uid")
        if uid:
            self._uids[name] = str(uid)
        labels = metadata.get("labels") or {}
        self._labels[name] = {str(key): str(value) for key, value in labels.items()}

    def forget(self, name: str) -> None:
        self._uids.pop(name, None)
        self._labels.pop(name, None)

    def uid(self, name: str) -> str | None:
        return self._uids.get(name)

    def labels(self) -> Mapping[str, Mapping[str, str]]:
        """Every known Node's labels, by name (a live view: copy it before awaiting)."""
        return self._labels


async def follow_nodes(source: CollectionSource, directory: NodeDirectory) -> None:
    """Keep ``directory`` up to date with the cluster's Nodes until cancelled or the watch
    fails (``WATCH_PATIENCE`` failures in a row)."""
    events = source.watch_collection(NODES, max_failures=WATCH_PATIENCE)
    async with contextlib.aclosing(events):
        async for event in events:
            if not isinstance(event.object, dict):
                continue
            if event.type == "DELETED":
                name = (event.object.get("metadata") or {}).get("name")
                if name:
                    directory.forget(str(name))
            elif event.type in ("ADDED", "MODIFIED"):
                directory.see(event.object)
