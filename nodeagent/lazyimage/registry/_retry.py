"""How often and how long to retry a failing registry request. Pure: no I/O, no sleeping."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "RetryState", "parse_retry_after"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 5xx, 429 and connection failures with capped exponential backoff.

    ``attempts`` counts every try, the first included. ``total_timeout`` bounds the time from
    the first try to the start of the last one, so a caller waits at most about
    ``total_timeout`` plus one request timeout. With ``jitter`` each delay is drawn from
    [delay/2, delay] so that many clients that failed together do not retry together.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    total_timeout: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")
        if self.total_timeout <= 0:
            raise ValueError("RetryPolicy.total_timeout must be positive")

    def backoff(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1 for the first retry), without jitter."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(retry - 1, 0)))

    def schedule(self) -> list[float]:
        """Every delay this policy may sleep, in order, without jitter."""
        return [self.backoff(n) for n in range(1, self.attempts)]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryState:
    """Counts the attempts of one operation and decides whether, and when, to try again."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self._start = clock()
        self.attempt = 1

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def remaining(self) -> float:
        return max(0.0, self.policy.total_timeout - self.elapsed)

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """The delay before the next attempt, or None when the attempts or the time are spent.

        A server's ``Retry-After`` replaces the backoff but is capped at ``max_delay``: the
        bound holds even if a server asks for minutes.
        """
        if self.attempt >= self.policy.attempts:
            return None
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), self.policy.max_delay)
        else:
            delay = self.policy.backoff(self.attempt)
            if self.policy.jitter:
                delay = delay / 2 + self._rand() * delay / 2
        if delay >= self.remaining:
            return None
        self.attempt += 1
        return delay
