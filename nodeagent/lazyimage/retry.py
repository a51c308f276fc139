"""The one retry policy of lazyimage: how often, how long and how far apart to try again.

Pure: no I/O, no sleeping, no imports of lazyimage. The registry client runs each operation's
attempts under a ``RetryPolicy`` with a ``RetryState``; the Kubernetes watches pause between
failures in a row with ``RetryPolicy.delay`` and give up after ``attempts`` of them (never,
by default).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "RetryState"]

# 2**60 times any sensible first delay is past every cap: a long outage cannot overflow.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True)
class RetryPolicy:
    """Retry failures with capped exponential backoff.

    ``attempts`` counts every try, the first included (None: no limit). ``total_timeout``
    bounds the time from the first try to the start of the last one (None: no limit), so a
    caller waits at most about ``total_timeout`` plus one request timeout. With ``jitter``
    each delay is drawn from [delay/2, delay], never below ``min_delay``, so that many
    clients that failed together do not retry together.
    """

    attempts: int | None = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    total_timeout: float | None = 60.0
    jitter: bool = True
    min_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.min_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")
        if self.total_timeout is not None and self.total_timeout <= 0:
            raise ValueError("RetryPolicy.total_timeout must be positive")

    @property
    def bounded(self) -> bool:
        """Whether the policy gives up: after a number of attempts and a time."""
        return self.attempts is not None and self.total_timeout is not None

    def backoff(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1 for the first retry), without jitter."""
        doublings = min(max(retry - 1, 0), _MAX_DOUBLINGS)
        return float(min(self.max_delay, self.base_delay * 2.0**doublings))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The delay before retry number ``retry``, jittered if the policy says so."""
        nominal = self.backoff(retry)
        if not self.jitter:
            return nominal
        return max(min(self.min_delay, nominal), nominal * (0.5 + rand() / 2))

    def schedule(self) -> list[float]:
        """Every delay this policy may sleep, in order, without jitter."""
        if self.attempts is None:
            raise ValueError("a policy without a limit of attempts has no end to its schedule")
        return [self.backoff(n) for n in range(1, self.attempts)]


class RetryState:
    """Counts the attempts of one operation and decides whether, and when, to try again.

    ``deadline`` (on ``clock``) is the caller's: no attempt starts after it.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        deadline: float | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self._start = clock()
        self._deadline = deadline
        self.attempt = 1
        # Set when the deadline, rather than the policy, left no time for another attempt.
        self.past_deadline = False
        self._last_chance_taken = False

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def remaining(self) -> float:
        """The time left before the policy's total_timeout or the deadline, if either."""
        left = math.inf
        if self.policy.total_timeout is not None:
            left = self.policy.total_timeout - self.elapsed
        if self._deadline is not None:
            left = min(left, self._deadline - self._clock())
        return max(0.0, left)

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """The delay before the next attempt, or None when the attempts or the time are spent.

        A server's ``Retry-After`` replaces the backoff but is capped at ``max_delay``: the
        bound holds even if a server asks for minutes.
        """
        if self.policy.attempts is not None and self.attempt >= self.policy.attempts:
            return None
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), self.policy.max_delay)
        else:
            delay = self.policy.delay(self.attempt, self._rand)
        if delay >= self.remaining:
            # Rather than give up a whole backoff early, try once more shortly before the time
            # runs out: a server that is back by then still serves the call. Not when the
            # server itself asked to be left alone for longer (Retry-After).
            last_chance = self.remaining - self.policy.base_delay
            if self._last_chance_taken or last_chance <= 0 or retry_after is not None:
                self.past_deadline = self._deadline is not None and (
                    delay >= self._deadline - self._clock()
                )
                return None
            self._last_chance_taken = True
            delay = last_chance
        self.attempt += 1
        return delay
