"""The story's steps: each bounded by a time limit and reporting progress while it runs.

A step runs in the main thread; SIGALRM ends it at its limit (with :class:`StepTimeout`, raised
where the step is waiting, so subprocesses are killed and the started components are stopped
by the code around it), and a ticker thread says every few seconds that it is still running.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["StepTimeout", "Steps"]

TICK_EVERY = 5.0


class StepTimeout(Exception):
    """A step ran past its limit."""


def _print(line: str) -> None:
    print(line, flush=True)


class Steps:
    """Runs steps one at a time, writing progress with ``say``; ``timings`` keeps how long each
    finished step took, in order."""

    def __init__(self, say: Callable[[str], None] = _print, tick_every: float = TICK_EVERY) -> None:
        self.say = say
        self.tick_every = tick_every
        self.timings: dict[str, float] = {}
        self._began = time.monotonic()

    def clock(self) -> str:
        """Time since the story began, as ``[mm:ss]``."""
        elapsed = int(time.monotonic() - self._began)
        return f"[{elapsed // 60:02d}:{elapsed % 60:02d}]"

    @contextlib.contextmanager
    def step(self, title: str, limit: float) -> Iterator[None]:
        """Run the body as step ``title``, for at most ``limit`` seconds."""
        self.say(f"{self.clock()} {title} ...")
        began = time.monotonic()
        done = threading.Event()
        ticker = threading.Thread(
            target=self._tick, args=(title, began, limit, done), name="story-ticker", daemon=True
        )

        def expire(signum: int, frame: FrameType | None) -> None:
            raise StepTimeout(f"{title}: not done after {limit:.0f} s")

        previous = signal.signal(signal.SIGALRM, expire)
        outer, _ = signal.setitimer(signal.ITIMER_REAL, limit)
        ticker.start()
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:  # an enclosing alarm (pytest-timeout's, say) goes on where it was
                spent = time.monotonic() - began
                signal.setitimer(signal.ITIMER_REAL, max(outer - spent, 0.001))
            done.set()
            ticker.join()
        took = time.monotonic() - began
        self.timings[title] = took
        self.say(f"{self.clock()} {title}: done in {took:.1f} s")

    def _tick(self, title: str, began: float, limit: float, done: threading.Event) -> None:
        while not done.wait(self.tick_every):
            elapsed = time.monotonic() - began
            self.say(f"{self.clock()}   ... {title}: {elapsed:.0f} s (limit {limit:.0f} s)")
