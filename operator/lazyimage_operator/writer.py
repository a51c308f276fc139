"""The operator's writes to the API server: orders on LazyImageNodes, and LazyImages.

Each node's orders are merged into what the ``NodeBook`` last saw of its LazyImageNode (from
the watch, or the writer's own last write) and written with that resourceVersion, so a write
that raced another (an agent's report, say) fails, is read again, and is retried on the fresh
object instead of overwriting it. Orders the node already holds cost no request at all.
Writes for one node go one at a time, and orders that arrive meanwhile are merged into the
next write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lazyimage import names
from lazyimage.api import Order
from lazyimage.kube import ConflictError, KubeClient, NotFoundError, ResourcePath

from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.nodewatch import NODES, NodeDirectory
from lazyimage_operator.orders import merge_orders

__all__ = ["LAZYIMAGES", "LAZYIMAGE_NODES", "ClusterWriter"]

LAZYIMAGES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_PLURAL)
LAZYIMAGE_NODES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_NODE_PLURAL)
_API_VERSION = f"{names.API_GROUP}/{names.API_VERSION}"
_ATTEMPTS = 8
OPERATOR_NAME = "lazyimage-operator"


@dataclass
class _Batch:
    """Orders for one node waiting for the node's next write; joined until it starts."""

    orders: list[Order]
    done: asyncio.Future[bool]


class ClusterWriter:
    def __init__(
        self,
        client: KubeClient,
        nodes: NodeBook,
        *,
        refresh: timedelta,
        limit: int,
        directory: NodeDirectory | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._nodes = nodes
        self._refresh = refresh
        self._limit = limit
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, _Batch] = {}
        self._known_lazyimages: set[str] = set()
        self._directory = directory if directory is not None else NodeDirectory()

    def now(self) -> datetime:
        return self._clock()

    async def order(self, node: str, orders: Sequence[Order]) -> bool:
        """Merge ``orders`` into the node's LazyImageNode (made if missing). True if written.

        Orders for one node that arrive while a write for it is under way are merged into one
        write after it: a burst of pods bound to one node costs one request, not one each.
        """
        await self._nodes.complete()  # no order is merged into a half-listed book
        batch = self._pending.get(node)
        if batch is not None:
            batch.orders.extend(orders)
            return await asyncio.shield(batch.done)
        batch = _Batch(list(orders), asyncio.get_running_loop().create_future())
        self._pending[node] = batch
        async with self._locks.setdefault(node, asyncio.Lock()):
            del self._pending[node]
            try:
                written = await self._write(node, batch.orders)
            except BaseException as exc:
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved here: joiners, if any, get it too
                raise
            batch.done.set_result(written)
            return written

    async def _write(self, node: str, orders: Sequence[Order]) -> bool:
        for attempt in range(_ATTEMPTS):
            known = self._nodes.known(node)
            if known is None:
                # The watch has shown every LazyImageNode there is, so an unknown one is most
                # likely missing: make it at once, and read it only if it was there after all.
                if attempt == 0 and await self._create_node(node, orders):
                    return True
                if not await self._read(node) and await self._create_node(node, orders):
                    return True
                continue
            merged = merge_orders(
                known.orders, orders, now=self.now(), refresh=self._refresh, limit=self._limit
            )
            if merged is None:
                return False
            patch = {"metadata": {"resourceVersion": known.version}, "spec": {"orders": merged}}
            try:
                self._nodes.observe(
                    node, await self._client.merge_patch(LAZYIMAGE_NODES, node, patch)
                )
            except ConflictError:  # moved on (an agent's report): read it again
                await self._read(node)
                continue
            except NotFoundError:
                self._nodes.observe(node, None)
                continue
            return True
        raise ConflictError(f"orders for node {node}: still conflicting after {_ATTEMPTS} tries")

    async def _read(self, node: str) -> bool:
        """Read the node's LazyImageNode into the book. False if there is none."""
        try:
            self._nodes.observe(node, await self._client.get(LAZYIMAGE_NODES, node))
        except NotFoundError:
            self._nodes.observe(node, None)
            return False
        return True

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
            self._nodes.observe(node, await self._client.create(LAZYIMAGE_NODES, body))
        except ConflictError:  # made meanwhile, by another write: merge into it
            return False
        return True

    async def _node_owner(self, node: str) -> dict[str, Any] | None:
        """The Node as the owner of its LazyImageNode, so the garbage collector removes the
        channel with the node. None if the Node is not (yet) there."""
        uid = self._directory.uid(node)
        if uid is None:
            try:
                uid = str((await self._client.get(NODES, node))["metadata"]["uid"])
            except NotFoundError:
                return None
        return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}

    async def ensure_lazyimage(self, name: str, image: str) -> bool:
        """Make the LazyImage ``name`` for ``image`` unless it exists. True if made.

        It carries no pull secrets: a pod's secrets travel in its orders, not to other nodes."""
        if name in self._known_lazyimages:
            return False
        # Noted before the request: pods bound at once that share a new image make it once.
        self._known_lazyimages.add(name)
        spec: dict[str, Any] = {"image": image}
        body = {
            "apiVersion": _API_VERSION,
            "kind": names.LAZYIMAGE_KIND,
            "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: OPERATOR_NAME}},
            "spec": spec,
        }
        try:
            await self._client.create(LAZYIMAGES, body)
        except ConflictError:
            return False
        except BaseException:
            self._known_lazyimages.discard(name)
            raise
        return True

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
