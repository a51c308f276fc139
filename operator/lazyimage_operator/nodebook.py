"""What the operator knows of each LazyImageNode, in one place.

The book is fed by the operator's watch of LazyImageNodes (``lazynodewatch``), which lists
them all before it says the book is complete (so no LazyImage is folded or ordered from a
half-listed cluster: both wait for ``complete``), and by the writer's own writes, which it
knows before the watch shows them. It is read by the writer (the orders to merge into, and the
resourceVersion to write them with) and by each LazyImage's fold (the views of its nodes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lazyimage_operator.fold import NodeImageView, node_views

__all__ = ["KnownNode", "NodeBook"]


@dataclass(frozen=True)
class KnownNode:
    """One LazyImageNode as last seen: its version, its orders, and its views per LazyImage."""

    version: str
    orders: list[dict[str, Any]]
    views: dict[str, NodeImageView]


def _newer(version: str, than: str) -> bool:
    # resourceVersions are opaque; etcd's are integers, which is all this ordering assumes.
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return True


class NodeBook:
    """``listed``: whether the book starts complete (a test's); the operator's starts empty and
    is marked complete by its watch once every LazyImageNode was listed."""

    def __init__(self, *, listed: bool = True) -> None:
        self._nodes: dict[str, KnownNode] = {}
        self._by_lazyimage: dict[str, dict[str, NodeImageView]] = {}
        self._listed = asyncio.Event()
        if listed:
            self._listed.set()

    def mark_listed(self) -> None:
        self._listed.set()

    async def complete(self) -> None:
        """Return once every LazyImageNode there was has been seen."""
        if not self._listed.is_set():
            await self._listed.wait()

    def observe(self, node: str, obj: Mapping[str, Any] | None) -> None:
        """Note a LazyImageNode as the API server returned it (None: deleted). An object no
        newer than the one known (a watch event delivered after our own write) changes
        nothing."""
        if obj is None:
            self._replace(node, None)
            return
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        known = self._nodes.get(node)
        if not version or (known is not None and not _newer(version, known.version)):
            return
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        orders = [dict(raw) for raw in spec.get("orders") or []]
        self._replace(node, KnownNode(version, orders, node_views(node, spec, status)))

    def _replace(self, node: str, known: KnownNode | None) -> None:
        old = self._nodes.pop(node, None)
        for lazyimage in old.views if old else ():
            views = self._by_lazyimage[lazyimage]
            del views[node]
            if not views:
                del self._by_lazyimage[lazyimage]
        if known is None:
            return
        self._nodes[node] = known
        for lazyimage, view in known.views.items():
            self._by_lazyimage.setdefault(lazyimage, {})[node] = view

    def known(self, node: str) -> KnownNode | None:
        return self._nodes.get(node)

    def views_of(self, lazyimage: str) -> list[NodeImageView]:
        """The views of every node ordered for, or reporting on, one LazyImage."""
        return list(self._by_lazyimage.get(lazyimage, {}).values())
