"""The LazyImages' status, folded from their nodes' reports by one loop every interval, and
their nodeSelector prewarm orders written on the way.

Not a kopf timer: kopf puts its finalizer on every object that has a timer, whatever the
delete handler says, and a finalizer that outlives the operator (``helm uninstall``) makes
deleting the LazyImages, or their CRD, wait forever. A LazyImage needs no finalizer: one
deleted while no operator runs is simply forgotten. So the loop is the operator's own, fed by
kopf's events, and supervised like the pod watch; it starts folding once the ``NodeBook`` has
listed every LazyImageNode, so no LazyImage is folded from a half-listed cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from lazyimage.api import format_time
from lazyimage.kube import ConflictError, KubeClient, KubeError, NotFoundError

from lazyimage_operator import metrics
from lazyimage_operator.fold import fold_status
from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.nodewatch import NodeDirectory
from lazyimage_operator.prewarm import SelectorPrewarm, selector_orders
from lazyimage_operator.writer import LAZYIMAGES, ClusterWriter

__all__ = ["LazyImageView", "StatusLoop", "release_finalizer"]

logger = logging.getLogger(__name__)


@dataclass
class LazyImageView:
    """A LazyImage as last seen (or as last written, until the watch shows the write)."""

    spec: dict[str, Any]
    status: dict[str, Any]
    generation: int | None


class StatusLoop:
    def __init__(
        self,
        client: KubeClient,
        writer: ClusterWriter,
        nodes: NodeBook,
        interval: float,
        directory: NodeDirectory | None = None,
    ) -> None:
        self._client = client
        self._writer = writer
        self._nodes = nodes
        self._interval = interval
        self._images: dict[str, LazyImageView] = {}
        # The Nodes' labels, for nodeSelectors.
        self._directory = directory if directory is not None else NodeDirectory()

    def see(self, name: str, view: LazyImageView) -> None:
        self._images[name] = view

    def forget(self, name: str) -> None:
        self._images.pop(name, None)
        self._writer.forget_lazyimage(name)

    def known(self) -> list[str]:
        return sorted(self._images)

    def recorded_profile(self, name: str) -> str | None:
        """When the LazyImage's profile was recorded ("" if it has none), or None if the
        LazyImage has not been seen."""
        view = self._images.get(name)
        if view is None:
            return None
        return str((view.status.get("profile") or {}).get("recorded") or "")

    async def run(self) -> None:
        """Fold every known LazyImage, then wait the interval; forever."""
        await self._nodes.complete()  # no status is folded from a half-listed book
        while True:
            for name in self.known():
                try:
                    await self.fold(name)
                except KubeError as exc:
                    logger.warning("could not update LazyImage %s: %s", name, exc)
            await anyio.sleep(self._interval)

    async def fold(self, name: str) -> None:
        view = self._images.get(name)
        if view is None:
            return
        views = self._nodes.views_of(name)
        prewarm = SelectorPrewarm.from_spec(name, view.spec)
        if prewarm is not None:
            wanted = selector_orders(prewarm, self._directory.labels(), views, self._writer.now())
            for node, order in wanted.items():
                await self._writer.order(node, [order])
                metrics.ORDERS.labels("selector", "written").inc()
        folded = fold_status(
            views,
            now=format_time(self._writer.now()),
            generation=view.generation,
            previous=view.status,
        )
        if not _differs(view.status, folded):
            return
        try:
            await self._client.merge_patch(
                LAZYIMAGES, name, {"status": folded}, subresource="status"
            )
        except NotFoundError:
            self.forget(name)
            return
        view.status = {**view.status, **folded}
        metrics.STATUS_WRITES.inc()


def _differs(current: Mapping[str, Any], folded: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in folded.items())


async def release_finalizer(
    client: KubeClient, name: str, body: Mapping[str, Any], finalizer: str
) -> None:
    """Remove ``finalizer`` from the LazyImage ``name`` if it has it: operators before the
    status loop put kopf's there, and nothing would remove it once they are gone."""
    metadata = body.get("metadata") or {}
    finalizers = list(metadata.get("finalizers") or [])
    if finalizer not in finalizers:
        return
    patch = {
        "metadata": {
            "finalizers": [f for f in finalizers if f != finalizer],
            # At the version read: a finalizer added meanwhile by another party is kept.
            "resourceVersion": metadata.get("resourceVersion"),
        }
    }
    try:
        await client.merge_patch(LAZYIMAGES, name, patch)
        logger.info("released the finalizer %s of LazyImage %s", finalizer, name)
    except (NotFoundError, ConflictError):
        pass  # gone, or changed: the change's event brings it here again
