"""Priorities, the gate that makes lower-priority fetches wait for higher ones, and each
layer's pacer through that gate and the bandwidth bucket.

An agent has one PriorityGate, given to every layer's fetcher, so that demand on any layer
holds back prefetch on every layer."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

import anyio
import anyio.lowlevel

from lazyimage.fetch._bandwidth import TokenBucket

__all__ = ["Pacer", "Priority", "PriorityGate"]


class Priority(IntEnum):
    """Why bytes are fetched; a lower value goes first."""

    DEMAND = 0  # a reader is waiting for them
    PREFETCH = 1  # the layer's prioritized zone, or files an order named
    BACKGROUND = 2  # filling in the rest of the layer

    @property
    def reason(self) -> str:
        """The ``reason`` label of the fetch metrics."""
        return self.name.lower()


class PriorityGate:
    """Counts the fetches active at each priority. ``wait_turn(p)`` returns once nothing of
    a higher priority is queued or in flight; lower priorities call it between their ranges,
    so on-demand reads never queue behind a prefetch for long.

    With ``quiet``, it also waits until higher priorities have been idle that long. A
    starting workload misses in bursts, with its own work in between: a background fill
    that ran in those gaps would take the link and the CPU the next burst needs.
    """

    def __init__(self) -> None:
        self._active = [0] * len(Priority)
        self._idle_since = [-math.inf] * len(Priority)
        self._changed: anyio.Event | None = None

    def busy_above(self, priority: Priority) -> bool:
        return any(self._active[:priority])

    @contextmanager
    def active(self, priority: Priority) -> Iterator[None]:
        self._active[priority] += 1
        try:
            yield
        finally:
            self._active[priority] -= 1
            if not self._active[priority]:
                self._idle_since[priority] = anyio.current_time()
            if self._changed is not None:
                self._changed.set()
                self._changed = None

    def touched(self, priority: Priority) -> None:
        """Work at ``priority`` that needed no fetch (a read served from the cache): it
        restarts the quiet period all the same, so a fill waits while a container starts
        from a prewarmed cache, rather than taking the CPU its start needs."""
        self._idle_since[priority] = anyio.current_time()

    async def wait_turn(
        self, priority: Priority, quiet: float = 0.0, since: float = -math.inf
    ) -> None:
        """Return once no higher priority is active, and none was for ``quiet`` seconds,
        counting at the earliest from ``since`` (an ``anyio.current_time()``)."""
        await anyio.lowlevel.checkpoint()
        while True:
            if self.busy_above(priority):
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
                continue
            last = max([since, *self._idle_since[:priority]])
            left = last + quiet - anyio.current_time()
            if left <= 0:
                return
            await anyio.sleep(left)


class Pacer:
    """When one layer's prefetch or background fill may fetch: after higher priorities of
    every layer went idle (background fill: and stayed quiet ``background_quiet`` seconds),
    and after the bucket allowed the bytes. Demand never waits here."""

    def __init__(
        self, gate: PriorityGate, bucket: TokenBucket | None, background_quiet: float
    ) -> None:
        self.gate = gate
        self._bucket = bucket
        self._background_quiet = background_quiet
        self._background_since: float | None = None  # when background fill first asked

    async def wait_turn(self, priority: Priority, size: int) -> None:
        """Let higher priorities go first, then take ``size`` bytes from the bucket."""
        quiet, since = 0.0, -math.inf
        if priority is Priority.BACKGROUND:
            if self._background_since is None:
                self._background_since = anyio.current_time()
            quiet, since = self._background_quiet, self._background_since
        await self.gate.wait_turn(priority, quiet, since)
        if self._bucket is not None and size:
            await self._bucket.take(size)
            # Demand may have arrived while the bucket refilled.
            await self.gate.wait_turn(priority, quiet, since)
