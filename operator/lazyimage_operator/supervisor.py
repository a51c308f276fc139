"""Keeping one of the operator's own loops alive, and saying when it cannot be.

A supervised loop that ends, by an error or by returning, is logged, counted and started
again after a pause: 1 s, doubling up to 30 s, back to 1 s after a run that lasted longer
than that. This is the policy of the agent's order follower (``lazyimage.agent.main``). Unlike
the agent, whose mounts do not depend on its follower, the operator is its loops: one that
keeps failing, or has stopped, makes ``problem()`` say so, and the liveness probe fails, so
kubelet restarts the pod and the failure shows as restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from prometheus_client import Counter

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

RESTART_PAUSE = 1.0
RESTART_PAUSE_MAX = 30.0
# Failures in a row, each after a short run, that make the loop unhealthy: with the pauses
# above, about half a minute of failing and restarting.
FAILURES_ALLOWED = 5


class Supervisor:
    def __init__(
        self,
        name: str,
        loop: Callable[[], Awaitable[None]],
        *,
        restarts: Counter,
        pause: float = RESTART_PAUSE,
        pause_max: float = RESTART_PAUSE_MAX,
        failures_allowed: int = FAILURES_ALLOWED,
    ) -> None:
        self.name = name
        self._loop = loop
        self._restarts = restarts
        self._pause = pause
        self._pause_max = pause_max
        self._failures_allowed = failures_allowed
        self.restarts = 0
        self._failures = 0  # in a row, each after a short run
        self._last_error = ""
        self._run_started: float | None = None  # while the loop runs
        self._stopped = False

    async def run(self) -> None:
        """Run the loop until cancelled, starting it again whenever it ends."""
        pause = self._pause
        try:
            while True:
                started = self._run_started = anyio.current_time()
                try:
                    await self._loop()
                    self._last_error = "it ended"
                    logger.warning("the %s ended, again in %.0f s", self.name, pause)
                except Exception as exc:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("the %s failed, again in %.0f s", self.name, pause)
                self._run_started = None
                self.restarts += 1
                self._restarts.inc()
                long_run = anyio.current_time() - started > self._pause_max
                self._failures = 1 if long_run else self._failures + 1
                await anyio.sleep(pause)
                # A loop that ran a while before failing starts the backoff over.
                pause = self._pause if long_run else min(pause * 2, self._pause_max)
        finally:
            self._run_started = None
            self._stopped = True

    def problem(self) -> str | None:
        """Why the loop is not healthy (stopped, or failing again and again), or None.

        A loop running longer than the longest pause is healthy whatever came before."""
        if self._stopped:
            return f"the {self.name} has stopped"
        running = self._run_started
        if running is not None and anyio.current_time() - running > self._pause_max:
            return None
        if self._failures >= self._failures_allowed:
            return (
                f"the {self.name} failed {self._failures} times in a row, last: {self._last_error}"
            )
        return None
