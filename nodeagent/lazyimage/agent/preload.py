"""Opening an image's layers before containerd asks for them.

containerd prepares an image's layers one at a time, each Prepare after the one before has
returned, so opening them one by one (footer, TOC, index) adds up. Every Prepare's CRI labels
name all the layers of the image; the first one starts opening the others at once, and each
later Prepare takes its layer ready.

A layer's TOC digest only comes with its own Prepare, so a preloaded layer is not trusted
yet: the caller uses it only if the digest of the TOC it was built from matches, and serves
nothing from it before. A preloaded layer no Prepare takes is dropped after ``keep`` seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog
import trio

from lazyimage.registry import Reference

__all__ = ["Preloader"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    done: trio.Event = field(default_factory=trio.Event)
    value: T | None = None


class Preloader(Generic[T]):
    """``start`` opens layers in the background with ``open_layer(ref, digest)``, at most
    ``limit`` at once; ``take`` hands one over, waiting if it is still being opened.
    ``drop`` releases a layer that was opened but not taken."""

    def __init__(
        self,
        open_layer: Callable[[Reference, str], Awaitable[T]],
        drop: Callable[[T], None],
        *,
        limit: int = 4,
        keep: float = 120.0,
    ) -> None:
        self._open_layer = open_layer
        self._drop = drop
        self._slots = trio.Semaphore(limit)
        self._keep = keep
        self._pending: dict[str, _Pending[T]] = {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._pending

    def start(self, nursery: trio.Nursery, ref: Reference, digests: Sequence[str]) -> int:
        """Open the layers not already pending; returns how many were started."""
        started = 0
        for digest in digests:
            if digest not in self._pending:
                pending: _Pending[T] = _Pending()
                self._pending[digest] = pending
                nursery.start_soon(self._load, ref, digest, pending)
                started += 1
        return started

    async def take(self, digest: str) -> T | None:
        """The preloaded layer, once opened (waiting for it, also while it waits for its
        turn); None if none was started or opening it failed."""
        pending = self._pending.pop(digest, None)
        if pending is None:
            return None
        await pending.done.wait()
        value, pending.value = pending.value, None
        return value

    async def _load(self, ref: Reference, digest: str, pending: _Pending[T]) -> None:
        try:
            async with self._slots:
                pending.value = await self._open_layer(ref, digest)
        except Exception as exc:  # a head start may fail in any way
            # The layer's own Prepare opens it again, and reports what goes wrong.
            log.info("preload_failed", layer=digest, error=f"{type(exc).__name__}: {exc}")
        finally:
            pending.done.set()
        if self._pending.get(digest) is not pending:
            return  # taken
        await trio.sleep(self._keep)
        if self._pending.get(digest) is pending:
            del self._pending[digest]
            if pending.value is not None:
                self._drop(pending.value)
                log.info("preload_dropped", layer=digest, seconds=self._keep)
