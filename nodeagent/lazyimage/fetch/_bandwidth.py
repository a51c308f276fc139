"""A token bucket that caps the bandwidth of prefetch and background fill."""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel

__all__ = ["TokenBucket"]


class TokenBucket:
    """At most ``burst + rate * t`` bytes are taken in any ``t`` seconds.

    ``take(n)`` reserves ``n`` tokens at once, even more than ``burst``, by letting the
    balance go negative, then sleeps until the debt is repaid. Reservations are served in
    the order they were made, so a large request cannot be starved by small ones, and the
    cap holds however the traffic is sliced. ``rate=None`` means unlimited. One bucket is
    shared by every layer; it uses the event loop's clock.
    """

    def __init__(self, rate: float | None, burst: int) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of bytes/s or None, not {rate}")
        if burst < 0:
            raise ValueError(f"burst must not be negative, not {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated: float | None = None

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` tokens at time ``now``; return how long the caller must wait."""
        if n < 0:
            raise ValueError(f"cannot take {n} tokens")
        if self.rate is None:
            return 0.0
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self, n: int, now: float) -> None:
        """Give back ``n`` tokens a cancelled caller did not use."""
        if self.rate is None:
            return
        self._refill(now)
        self._tokens = min(float(self.burst), self._tokens + n)

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        if self._updated is not None and now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        if self._updated is None or now > self._updated:
            self._updated = now

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent. Cancelled while waiting, it takes nothing."""
        delay = self.reserve(n, anyio.current_time())
        if delay <= 0:
            await anyio.lowlevel.checkpoint()
            return
        try:
            await anyio.sleep(delay)
        except BaseException:
            self.refund(n, anyio.current_time())
            raise
