"""The token bucket: exact arithmetic with a given clock, then waiting on the event loop's."""

from __future__ import annotations

import math

import anyio
import pytest
from lazyimage.fetch import TokenBucket

from tests.unit.virtual_clock import virtual_trio

pytestmark = pytest.mark.timeout(30)


def test_burst_is_free_then_debt_is_paid_at_the_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=500)
    assert bucket.reserve(500, now=0.0) == 0.0
    assert bucket.reserve(1000, now=0.0) == pytest.approx(1.0)
    # Reservations queue: the next one waits for the debt ahead of it too.
    assert bucket.reserve(500, now=0.0) == pytest.approx(1.5)


def test_tokens_refill_up_to_burst_only() -> None:
    bucket = TokenBucket(rate=100, burst=200)
    assert bucket.reserve(200, now=0.0) == 0.0
    assert bucket.reserve(100, now=1.0) == 0.0  # 100 refilled in 1 s
    # Idle for an hour: the bucket holds no more than burst.
    assert bucket.reserve(300, now=3600.0) == pytest.approx(1.0)


def test_take_larger_than_burst_is_allowed() -> None:
    bucket = TokenBucket(rate=10, burst=0)
    assert bucket.reserve(50, now=0.0) == pytest.approx(5.0)


def test_refund_returns_unused_tokens() -> None:
    bucket = TokenBucket(rate=100, burst=100)
    assert bucket.reserve(300, now=0.0) == pytest.approx(2.0)
    bucket.refund(300, now=0.0)
    assert bucket.reserve(100, now=0.0) == 0.0


def test_clock_going_backwards_is_ignored() -> None:
    bucket = TokenBucket(rate=100, burst=100)
    bucket.reserve(100, now=10.0)
    assert bucket.reserve(100, now=5.0) == pytest.approx(1.0)


def test_unlimited() -> None:
    bucket = TokenBucket(rate=None, burst=0)
    assert bucket.reserve(10**12, now=0.0) == 0.0


@pytest.mark.parametrize("rate", [0, -1, math.inf, math.nan])
def test_invalid_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=10)


def test_invalid_burst_and_take() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=-1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=1).reserve(-5, now=0.0)


# The waits on the event loop's clock, on a virtual clock (tests.unit.virtual_clock): the
# bucket's sleeps are then measured exactly, however loaded the machine is.


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [virtual_trio()])
async def test_take_sleeps_for_the_rate() -> None:
    bucket = TokenBucket(rate=100_000, burst=10_000)
    started = anyio.current_time()
    waits = []
    for _ in range(5):
        await bucket.take(10_000)  # 50 kB in all; 10 kB free, 40 kB at 100 kB/s
        waits.append(anyio.current_time() - started)
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_take_sleeps_under_asyncio_too() -> None:
    bucket = TokenBucket(rate=100_000, burst=10_000)
    started = anyio.current_time()
    for _ in range(3):
        await bucket.take(10_000)
    # A real clock: only the lower bound holds on a loaded machine.
    assert anyio.current_time() - started >= 0.2 - 0.005


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [virtual_trio()])
async def test_concurrent_takers_share_the_rate() -> None:
    bucket = TokenBucket(rate=200_000, burst=0)
    started = anyio.current_time()
    done: list[float] = []

    async def taker() -> None:
        await bucket.take(20_000)
        done.append(anyio.current_time() - started)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(taker)
    # Served one after another at the rate: 20 kB each at 200 kB/s.
    assert sorted(done) == pytest.approx([0.1, 0.2, 0.3, 0.4])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [virtual_trio()])
async def test_cancelled_take_gives_its_tokens_back() -> None:
    bucket = TokenBucket(rate=1000, burst=1000)
    with anyio.move_on_after(0.05):
        await bucket.take(60_000)  # would wait about a minute
    started = anyio.current_time()
    await bucket.take(500)
    # The 60 kB were given back: 500 of the tokens refilled meanwhile are free at once.
    assert anyio.current_time() == started
