"""The control API's logic: JSON requests in, LayerManager calls, JSON answers out."""

from __future__ import annotations

import time
from typing import Any

from lazyimage import __version__
from lazyimage.agent.layers import LayerManager, LayerSpec
from lazyimage.agent.prewarm import ImagePrewarmer
from lazyimage.cache import ChunkCache

__all__ = ["AgentControl"]


class AgentControl:
    """Implements agent.http.ControlAPI."""

    def __init__(
        self,
        manager: LayerManager,
        cache: ChunkCache,
        mountpoint: str,
        prewarmer: ImagePrewarmer,
    ) -> None:
        self._manager = manager
        self._prewarmer = prewarmer
        self._cache = cache
        self._mountpoint = mountpoint
        self._started = time.time()
        self.is_ready = False

    def ready(self) -> bool:
        return self.is_ready

    def status(self) -> dict[str, Any]:
        stats = self._cache.stats()
        return {
            "version": __version__,
            "ready": self.is_ready,
            "uptimeSeconds": round(time.time() - self._started, 1),
            "mountpoint": self._mountpoint,
            "cache": {"bytes": stats.bytes, "chunks": stats.chunks, "capacity": stats.capacity},
            "layers": self.layers(),
        }

    async def mount_layer(self, request: dict[str, Any]) -> dict[str, Any]:
        background = request.get("background")
        if background is not None and not isinstance(background, bool):
            raise ValueError("background must be true or false")
        mounted = await self._manager.mount(LayerSpec.from_request(request), background=background)
        return mounted.describe()

    async def unmount_layer(self, name: str) -> None:
        await self._manager.unmount(name)

    def layers(self) -> list[dict[str, Any]]:
        return [layer.describe() for layer in self._manager.all()]

    def profile(self, name: str) -> list[dict[str, Any]]:
        layer = self._manager.get(name)
        return [{"path": e.path, "seconds": round(e.seconds, 6)} for e in layer.recorder.profile()]

    async def prefetch(self, request: dict[str, Any]) -> dict[str, Any]:
        paths = request.get("paths")
        if paths is not None and not (
            isinstance(paths, list) and all(isinstance(p, str) for p in paths)
        ):
            raise ValueError("paths must be a list of strings")
        return await self._manager.prefetch(LayerSpec.from_request(request), paths)

    async def prewarm_image(self, request: dict[str, Any]) -> dict[str, Any]:
        """What an order does for one image, with the node's own credentials: pull it through
        the node's CRI socket when the agent has one, and prefetch its priority zones."""
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError("image must be an image reference")
        result = await self._prewarmer.prewarm(image)
        return {
            "image": image,
            "digest": result.digest,
            "imageId": result.image_id,
            "layers": list(result.layers),
            "skipped": result.skipped,
            "zoneBytes": result.zone_bytes,
            "fetchedBytes": result.fetched_bytes,
            "seconds": round(result.seconds, 3),
        }
