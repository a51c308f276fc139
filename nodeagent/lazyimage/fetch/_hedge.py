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
    """The client's window; ``policy`` counts only when it is made (the agent has one
    stall timeout, hence one policy)."""
    window = _WINDOWS.get(client)
    if window is None:
        window = _WINDOWS[client] = LatencyWindow(policy)
    return window


class Signals:
    """What one request tells its hedger: ``attempt()`` as each of its attempts starts,
    ``progress()`` on each piece of an answer, ``retrying()`` before it retries by itself
    (after an error answer, a reset or its stall timeout)."""

    def __init__(self, on_first_byte: Callable[[float], None]) -> None:
        self._on_first_byte = on_first_byte
        self._attempt_started = anyio.current_time()
        self._first_byte = False
        self.last_progress = self._attempt_started
        self.backing_off = False  # between a failed attempt and the next one
        self.changed = anyio.Event()

    def attempt(self) -> None:
        self._attempt_started = self.last_progress = anyio.current_time()
        self._first_byte = False
        self.backing_off = False
        self._wake()

    def progress(self) -> None:
        self.last_progress = anyio.current_time()
        if not self._first_byte:
            # Only an attempt's first byte is a sample: a stalled attempt gives none.
            self._first_byte = True
            self._on_first_byte(self.last_progress - self._attempt_started)

    def retrying(self) -> None:
        self.backing_off = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


Request = Callable[[Signals], Awaitable[memoryview]]


async def hedged(
    request: Request, window: LatencyWindow, on_hedge: Callable[[], None] | None = None
) -> memoryview:
    """``request(signals)`` once, and once more if an attempt of the first goes
    ``window.delay()`` without progress (no byte yet, or none since the last); the first
    to succeed wins and the other is cancelled. At most one hedge.

    While the first request backs off between its own attempts it is not hedged: it had
    an answer (or a reset) and waits as asked, a server's ``Retry-After`` included, which
    a hedge would defeat. Its next attempt is watched again.

    A failure before the hedge is sent is raised at once. After it, a failure waits for
    the other request, and only if both fail is the first failure raised.
    """
    results: list[memoryview] = []
    failures: list[BaseException] = []
    first = Signals(window.record)

    async with anyio.create_task_group() as group:
        ended = [0]
        running = [1]

        async def run(signals: Signals) -> None:
            try:
                data = await request(signals)
            except Exception as exc:
                failures.append(exc)
                ended[0] += 1
                if ended[0] == running[0]:
                    group.cancel_scope.cancel()
                return
            results.append(data)
            group.cancel_scope.cancel()

        async def watch() -> None:
            while True:
                changed = first.changed
                if first.backing_off:
                    await changed.wait()
                    continue
                deadline = first.last_progress + window.delay()
                if anyio.current_time() >= deadline:
                    break
                with anyio.move_on_after(deadline - anyio.current_time()):
                    await changed.wait()
            if ended[0]:
                return
            running[0] += 1
            if on_hedge is not None:
                on_hedge()
            group.start_soon(run, Signals(window.record))

        group.start_soon(run, first)
        group.start_soon(watch)
    if results:
        return results[0]
    raise failures[0]
