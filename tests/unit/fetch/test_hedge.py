"""Hedged range reads: when a second request is sent, which answer is taken, and what is
learned from the latencies. On a virtual clock (tests.unit.virtual_clock), so each delay is
exact and a loaded machine cannot stretch it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from lazyimage.fetch._hedge import HedgePolicy, LatencyWindow, Signals, hedged, window_for

from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


class Requests:
    """Scripted requests: each is (seconds to the first byte, seconds more of body with a
    piece every 0.1 s, or an exception to raise then). ``math.inf`` never answers.

    Request number ``silent`` sends no piece after its first byte. Number ``retries`` has
    an error answer at its first byte, backs off ``backoff`` seconds, and goes on with the
    rest of its script in a second attempt."""

    def __init__(
        self,
        *script: tuple[float, float | Exception],
        silent: int = -1,
        retries: int = -1,
        backoff: float = 0.0,
    ) -> None:
        self.script = list(script)
        self.silent = silent
        self.retries = retries
        self.backoff = backoff
        self.started: list[float] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    async def __call__(self, signals: Signals) -> bytes:
        number = len(self.started)
        self.started.append(anyio.current_time())
        first_byte, rest = self.script[number]
        try:
            signals.attempt()
            await anyio.sleep(first_byte)
            signals.progress()
            if number == self.retries:
                signals.retrying()
                await anyio.sleep(self.backoff)
                signals.attempt()
            if isinstance(rest, Exception):
                raise rest
            if number == self.silent:
                await anyio.sleep(rest)
            else:
                end = anyio.current_time() + rest
                while anyio.current_time() < end:
                    await anyio.sleep(min(0.1, end - anyio.current_time()))
                    signals.progress()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(number)
            raise
        self.finished.append(number)
        return f"answer {number}".encode()


def warmed(first_byte: float, policy: HedgePolicy | None = None) -> LatencyWindow:
    window = LatencyWindow(policy)
    for _ in range(window.policy.min_samples):
        window.record(first_byte)
    return window


async def test_a_stalled_request_is_overtaken_by_its_hedge() -> None:
    window = warmed(0.01)  # 3 x p90 = 0.03 s, raised to the 0.1 s floor
    requests = Requests((math.inf, 0.0), (0.01, 0.0))
    hedges: list[float] = []
    start = anyio.current_time()
    data = await hedged(requests, window, on_hedge=lambda: hedges.append(anyio.current_time()))
    assert data == b"answer 1"
    assert [t - start for t in requests.started] == [0.0, pytest.approx(0.1)]
    assert [t - start for t in hedges] == [pytest.approx(0.1)]
    assert requests.cancelled == [0]
    assert anyio.current_time() - start == pytest.approx(0.11)


async def test_the_delay_follows_the_recent_p90() -> None:
    window = LatencyWindow(HedgePolicy(min_samples=10, window=10))
    for latency in [0.1] * 9 + [0.2]:
        window.record(latency)
    assert window.p90() == pytest.approx(0.1)
    assert window.delay() == pytest.approx(0.3)
    window.record(0.2)  # the oldest 0.1 leaves the window: now two of ten are slow
    assert window.p90() == pytest.approx(0.2)
    assert window.delay() == pytest.approx(0.6)


def test_the_delay_is_bounded() -> None:
    policy = HedgePolicy(floor=0.05, ceiling=1.0, initial=0.5, min_samples=2, window=4)
    window = LatencyWindow(policy)
    assert window.delay() == 0.5  # nothing known yet
    window.record(10.0)
    window.record(10.0)
    assert window.delay() == 1.0
    fast = warmed(0.0001, policy)
    assert fast.delay() == 0.05


async def test_a_request_that_answers_in_time_is_not_hedged() -> None:
    window = warmed(0.1)  # hedge after 0.3 s without a byte
    requests = Requests((0.2, 5.0))  # a long body is not a stall while its pieces come
    hedges: list[str] = []
    assert await hedged(requests, window, on_hedge=lambda: hedges.append("hedge")) == b"answer 0"
    assert hedges == [] and len(requests.started) == 1


async def test_a_request_in_its_backoff_is_not_hedged() -> None:
    window = warmed(0.1)  # hedge after 0.3 s without progress
    # A 429 after 0.1 s, a 2 s Retry-After without a byte, then an answer.
    requests = Requests((0.1, 0.2), retries=0, backoff=2.0)
    hedges: list[str] = []
    assert await hedged(requests, window, on_hedge=lambda: hedges.append("hedge")) == b"answer 0"
    assert hedges == [] and len(requests.started) == 1


async def test_the_attempt_after_a_backoff_is_watched_again() -> None:
    window = warmed(0.1)
    # A 503 after 0.1 s, 2 s of backoff, then an attempt that stalls.
    requests = Requests((0.1, math.inf), (0.1, 0.0), retries=0, backoff=2.0, silent=0)
    start = anyio.current_time()
    assert await hedged(requests, window) == b"answer 1"
    assert requests.started[1] - start == pytest.approx(2.1 + 0.3)
    assert requests.cancelled == [0]


async def test_a_body_that_stops_is_hedged() -> None:
    window = warmed(0.1)  # hedge after 0.3 s without progress
    requests = Requests((0.1, math.inf), (0.1, 0.0), silent=0)
    start = anyio.current_time()
    assert await hedged(requests, window) == b"answer 1"
    # Sent 0.3 s after the first request's last byte, not after it started.
    assert requests.started[1] - start == pytest.approx(0.4)
    assert requests.cancelled == [0]


async def test_the_first_answer_wins_whichever_it_is() -> None:
    window = warmed(0.1)
    # The first answers late but before the hedge completes: the hedge is cancelled.
    requests = Requests((0.4, 0.0), (1.0, 0.0))
    assert await hedged(requests, window) == b"answer 0"
    assert requests.cancelled == [1] and len(requests.started) == 2


async def test_a_failure_before_the_hedge_is_raised_at_once() -> None:
    requests = Requests((0.01, ValueError("broken")))
    with pytest.raises(ValueError, match="broken"):
        await hedged(requests, warmed(0.1))
    assert len(requests.started) == 1


async def test_a_failure_after_the_hedge_waits_for_the_other() -> None:
    requests = Requests((0.5, ValueError("first broke")), (0.1, 0.5))
    assert await hedged(requests, warmed(0.1)) == b"answer 1"
    both = Requests((0.5, ValueError("first broke")), (0.5, ValueError("second broke")))
    with pytest.raises(ValueError, match="first broke"):
        await hedged(both, warmed(0.1))


async def test_stalls_are_not_samples() -> None:
    window = warmed(0.01)
    before = window.p90()
    assert before is not None
    await hedged(Requests((math.inf, 0.0), (0.01, 0.0)), window)
    # Only the hedge's own first byte (0.01 s after it was sent) was learned.
    assert window.p90() == pytest.approx(before)


def test_one_window_per_client() -> None:
    class Client:
        pass

    one, other = Client(), Client()
    assert window_for(one) is window_for(one)
    assert window_for(one) is not window_for(other)


@pytest.mark.parametrize(
    "kwargs", [{"floor": 0.0}, {"floor": 2.0, "ceiling": 1.0}, {"multiplier": 0.0}]
)
def test_an_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HedgePolicy(**kwargs)  # type: ignore[arg-type]
