"""The operator's writes to the API server: orders on LazyImageNodes, and LazyImages.

Each node's orders are read, merged and written back with the object's resourceVersion, so a
write that raced another is retried on the fresh object instead of overwriting it. Writes for
one node are serialised here, so the common race (several pods bound to one node at once)
costs no retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from lazyimage import names
from lazyimage.kube import ConflictError, KubeClient, NotFoundError, ResourcePath

from lazyimage_operator.orders import Order, merge_orders

__all__ = ["LAZYIMAGES", "LAZYIMAGE_NODES", "ClusterWriter"]

LAZYIMAGES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_PLURAL)
LAZYIMAGE_NODES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_NODE_PLURAL)
NODES = ResourcePath("", "v1", "nodes")
_API_VERSION = f"{names.API_GROUP}/{names.API_VERSION}"
_ATTEMPTS = 8
OPERATOR_NAME = "lazyimage-operator"


class ClusterWriter:
    def __init__(
        self,
        client: KubeClient,
        *,
        refresh: timedelta,
        limit: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._refresh = refresh
        self._limit = limit
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._known_lazyimages: set[str] = set()

    def now(self) -> datetime:
        return self._clock()

    async def order(self, node: str, orders: Sequence[Order]) -> bool:
        """Merge ``orders`` into the node's LazyImageNode (made if missing). True if written."""
        lock = self._locks.setdefault(node, asyncio.Lock())
        async with lock:
            for _ in range(_ATTEMPTS):
                try:
                    current = await self._client.get(LAZYIMAGE_NODES, node)
                except NotFoundError:
                    if await self._create_node(node, orders):
                        return True
                    continue
                spec = current.get("spec") or {}
                merged = merge_orders(
                    spec.get("orders") or [],
                    orders,
                    now=self.now(),
                    refresh=self._refresh,
                    limit=self._limit,
                )
                if merged is None:
                    return False
                version = current["metadata"]["resourceVersion"]
                patch = {"metadata": {"resourceVersion": version}, "spec": {"orders": merged}}
                try:
                    await self._client.merge_patch(LAZYIMAGE_NODES, node, patch)
                except ConflictError:
                    continue
                return True
            raise ConflictError(
                f"orders for node {node}: still conflicting after {_ATTEMPTS} tries"
            )

    async def _create_node(self, node: str, orders: Sequence[Order]) -> bool:
        merged = merge_orders([], orders, now=self.now(), refresh=self._refresh, limit=self._limit)
        metadata: dict[str, Any] = {
            "name": node,
            "labels": {names.MANAGED_BY_LABEL: OPERATOR_NAME},
        }
        owner = await self._node_owner(node)
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        body = {
            "apiVersion": _API_VERSION,
            "kind": names.LAZYIMAGE_NODE_KIND,
            "metadata": metadata,
            "spec": {"orders": merged or []},
        }
        try:
            await self._client.create(LAZYIMAGE_NODES, body)
        except ConflictError:  # made meanwhile, by the agent or another write: merge into it
            return False
        return True

    async def _node_owner(self, node: str) -> dict[str, Any] | None:
        """The Node as the owner of its LazyImageNode, so the garbage collector removes the
        channel with the node. None if the Node is not (yet) there."""
        try:
            found = await self._client.get(NODES, node)
        except NotFoundError:
            return None
        return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": found["metadata"]["uid"]}

    async def ensure_lazyimage(self, name: str, image: str) -> bool:
        """Make the LazyImage ``name`` for ``image`` unless it exists. True if made.

        It carries no pull secrets: a pod's secrets travel in its orders, not to other nodes."""
        if name in self._known_lazyimages:
            return False
        spec: dict[str, Any] = {"image": image}
        body = {
            "apiVersion": _API_VERSION,
            "kind": names.LAZYIMAGE_KIND,
            "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: OPERATOR_NAME}},
            "spec": spec,
        }
        try:
            await self._client.create(LAZYIMAGES, body)
            made = True
        except ConflictError:
            made = False
        self._known_lazyimages.add(name)
        return made

    async def set_profile(self, name: str, profile: dict[str, Any]) -> bool:
        """Make ``profile`` the LazyImage's learned startup profile. False if there is no such
        LazyImage (only prewarmed images keep profiles)."""
        patch = {"status": {"profile": profile}}
        try:
            await self._client.merge_patch(LAZYIMAGES, name, patch, subresource="status")
        except NotFoundError:
            return False
        return True

    def forget_lazyimage(self, name: str) -> None:
        self._known_lazyimages.discard(name)
