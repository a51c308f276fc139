"""The supervisor's restarts, backoff and verdict, on a virtual clock: every pause lasts
exactly what the code asked, however loaded the machine is."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from lazyimage_operator.supervisor import Supervisor
from prometheus_client import CollectorRegistry, Counter

from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


def _counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    return Counter("test_restarts", "restarts", registry=registry), registry


class Loop:
    """A loop that runs ``runs[i]`` seconds on its i-th start, then fails; after the last
    one, it runs until cancelled."""

    def __init__(self, *runs: float) -> None:
        self.runs = list(runs)
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(anyio.current_time())
        if len(self.starts) > len(self.runs):
            await anyio.sleep_forever()
        await anyio.sleep(self.runs[len(self.starts) - 1])
        raise RuntimeError(f"failure {len(self.starts)}")


async def test_a_failing_loop_is_restarted_with_doubling_pauses_and_counted() -> None:
    counter, registry = _counter()
    loop = Loop(*([0.0] * 7))
    watch = Supervisor("test loop", loop, restarts=counter)
    async with anyio.create_task_group() as group:
        t0 = anyio.current_time()
        group.start_soon(watch.run)
        await anyio.sleep(200)
        group.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip(loop.starts, loop.starts[1:], strict=False)]
    assert loop.starts[0] == t0
    assert gaps == [1, 2, 4, 8, 16, 30, 30]
    assert watch.restarts == 7
    assert registry.get_sample_value("test_restarts_total") == 7


async def test_it_is_unhealthy_after_five_short_failures_in_a_row() -> None:
    counter, _ = _counter()
    loop = Loop(*([0.0] * 5))  # fails at 0, 1, 3, 7 and 15 s; the run from 31 s stays up
    watch = Supervisor("test loop", loop, restarts=counter)
    async with anyio.create_task_group() as group:
        t0 = anyio.current_time()
        group.start_soon(watch.run)
        await anyio.sleep(14.5)
        assert watch.problem() is None  # four failures
        await anyio.sleep(1)
        problem = watch.problem()
        assert problem is not None
        assert "failed 5 times in a row" in problem
        assert "RuntimeError: failure 5" in problem
        # Healthy again once the sixth run outlasts the longest pause (30 s).
        await anyio.sleep_until(t0 + 31 + 29)
        assert watch.problem() is not None
        await anyio.sleep_until(t0 + 31 + 31)
        assert watch.problem() is None
        group.cancel_scope.cancel()
    assert len(loop.starts) == 6


async def test_a_long_run_starts_the_backoff_and_the_count_over() -> None:
    counter, _ = _counter()
    loop = Loop(0, 0, 0, 0, 60, 0)
    watch = Supervisor("test loop", loop, restarts=counter)
    async with anyio.create_task_group() as group:
        group.start_soon(watch.run)
        await anyio.sleep(200)
        assert watch.problem() is None  # four short failures, a long run, one more
        group.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip(loop.starts, loop.starts[1:], strict=False)]
    assert gaps == [1, 2, 4, 8, 60 + 16, 1]


async def test_a_loop_that_returns_is_restarted_and_a_stopped_one_is_unhealthy() -> None:
    counter, registry = _counter()
    runs: list[float] = []

    async def returns() -> None:
        runs.append(anyio.current_time())

    watch = Supervisor("test loop", returns, restarts=counter)
    assert watch.problem() is None
    with anyio.move_on_after(2.5):
        await watch.run()
    assert runs == [runs[0], runs[0] + 1]  # the third start, at 3 s, is past the deadline
    assert registry.get_sample_value("test_restarts_total") == len(runs)
    assert watch.problem() == "the test loop has stopped"
