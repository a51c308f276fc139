"""Hedged range reads: a second identical request for one that makes no progress.

A stalled range GET costs the whole stall timeout before it is retried. A request that has
produced no byte (or no further byte) for a few times the usual first-byte latency is most
likely stuck on one connection or one server, so a second request is sent beside it and
whichever completes first is taken; the other is cancelled. At most one hedge per read.
The stall timeout stays the last resort.

The delay adapts: ``multiplier`` times the 90th percentile of recent first-byte latencies,
kept between ``floor`` and ``ceiling``. Until enough latencies are known it is ``initial``.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = ["HedgePolicy", "LatencyWindow", "hedged", "window_for"]


@dataclass(frozen=True)
class HedgePolicy:
    """When to send a hedge. ``ceiling`` should stay below the stall timeout, or the
    stall timeout would always act first."""

    multiplier: float = 3.0
    floor: float = 0.1
    ceiling: float = 1.0
    initial: float = 0.5  # before ``min_samples`` latencies are known
    min_samples: int = 8
    window: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling:
            raise ValueError("HedgePolicy needs 0 < floor <= ceiling")
        if self.multiplier <= 0 or self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError("HedgePolicy needs multiplier > 0 and window >= min_samples >= 1")


class LatencyWindow:
    """The first-byte latencies of recent range GETs, and the hedge delay they imply."""

    def __init__(self, policy: HedgePolicy | None = None) -> None:
        self.policy = policy or HedgePolicy()
        self._samples: deque[float] = deque(maxlen=self.policy.window)

    def record(self, seconds: float) -> None:
        self._samples.append(max(0.0, seconds))

    def p90(self) -> float | None:
        if len(self._samples) < self.policy.min_samples:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]

    def delay(self) -> float:
        """Seconds without a byte after which a read is hedged."""
        policy = self.policy
        p90 = self.p90()
        wanted = policy.initial if p90 is None else policy.multiplier * p90
        return min(policy.ceiling, max(policy.floor, wanted))


# One window per registry client: every layer read through a client shares what it learned,
# so a layer's first reads (its footer and TOC) are hedged on the latency of earlier ones.
_WINDOWS: weakref.WeakKeyDictionary[Any, LatencyWindow] = weakref.WeakKeyDictionary()


def window_for(client: object, policy: HedgePolicy | None = None) -> LatencyWindow:
    window = _WINDOWS.get(client)
    if window is None:
        window = _WINDOWS[client] = LatencyWindow(policy)
    return window


Request = Callable[[Callable[[], None]], Awaitable[bytes]]


async def hedged(
    request: Request, window: LatencyWindow, on_hedge: Callable[[], None] | None = None
) -> bytes:
    """``request(progress)`` once, and once more if the first goes ``window.delay()``
    without calling ``progress`` (no byte yet, or none since the last); the first to
    succeed wins and the other is cancelled.

    A failure before the hedge is sent is raised at once. After it, a failure waits for
    the other request, and only if both fail is the first failure raised.
    """
    results: list[bytes] = []
    failures: list[BaseException] = []
    first_byte = [False]
    last_progress = [anyio.current_time()]  # of the first request

    def progress_of(number: int, started: float) -> Callable[[], None]:
        def progressed() -> None:
            now = anyio.current_time()
            if number == 0:
                last_progress[0] = now
            # Only the first byte of a read is a sample: a stalled request gives none.
            if not first_byte[0]:
                first_byte[0] = True
                window.record(now - started)

        return progressed

    async with anyio.create_task_group() as nursery:
        ended = [0]
        running = [1]

        async def run(number: int) -> None:
            try:
                data = await request(progress_of(number, anyio.current_time()))
            except Exception as exc:
                failures.append(exc)
                ended[0] += 1
                if ended[0] == running[0]:
                    nursery.cancel_scope.cancel()
                return
            results.append(data)
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            while anyio.current_time() < last_progress[0] + window.delay():
                await anyio.sleep_until(last_progress[0] + window.delay())
            if ended[0]:
                return
            running[0] += 1
            if on_hedge is not None:
                on_hedge()
            nursery.start_soon(run, 1)

        nursery.start_soon(run, 0)
        nursery.start_soon(watch)
    if results:
        return results[0]
    raise failures[0]
