"""The priority gate: lower priorities wait while higher ones are active. On a virtual
clock, so the quiet periods are measured exactly."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from lazyimage.fetch import Priority, PriorityGate

from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


async def test_lower_priorities_wait_for_higher_ones() -> None:
    gate = PriorityGate()
    passed: list[str] = []

    async def waiter(priority: Priority) -> None:
        await gate.wait_turn(priority)
        passed.append(priority.reason)

    async with anyio.create_task_group() as group:
        with gate.active(Priority.DEMAND):
            group.start_soon(waiter, Priority.BACKGROUND)
            group.start_soon(waiter, Priority.PREFETCH)
            group.start_soon(waiter, Priority.DEMAND)
            await anyio.sleep(0.05)
            assert passed == ["demand"]
            assert gate.busy_above(Priority.PREFETCH)
            assert not gate.busy_above(Priority.DEMAND)
    # Once demand is idle both lower priorities pass (neither is *active* yet).
    assert sorted(passed) == ["background", "demand", "prefetch"]
    assert not gate.busy_above(Priority.BACKGROUND)


async def test_background_waits_for_prefetch() -> None:
    gate = PriorityGate()
    passed_at: list[float] = []

    async def background() -> None:
        await gate.wait_turn(Priority.BACKGROUND)
        passed_at.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        with gate.active(Priority.PREFETCH):
            group.start_soon(background)
            await anyio.sleep(0.05)
            assert passed_at == []
            assert not gate.busy_above(Priority.PREFETCH)
        ended = anyio.current_time()
    # It passed the moment prefetch went idle, not a moment later.
    assert passed_at == [ended]


async def test_background_waits_for_a_quiet_period_after_demand() -> None:
    gate = PriorityGate()
    quiet = 0.3
    # Nothing was ever active: no wait.
    started = anyio.current_time()
    await gate.wait_turn(Priority.BACKGROUND, quiet)
    assert anyio.current_time() == started

    for _ in range(2):  # a burst of demand, with a gap shorter than the quiet period
        with gate.active(Priority.DEMAND):
            await anyio.sleep(0.01)
        ended = anyio.current_time()
        await anyio.sleep(0.1)
    await gate.wait_turn(Priority.BACKGROUND, quiet)
    # The quiet period counts from the end of the last demand, and lasts exactly that.
    assert anyio.current_time() - ended == pytest.approx(quiet)

    # Demand during the wait restarts it; prefetch ignores the quiet period of background.
    async def more_demand() -> None:
        await anyio.sleep(0.1)
        with gate.active(Priority.DEMAND):
            await anyio.sleep(0.01)

    with gate.active(Priority.DEMAND):
        await anyio.sleep(0.01)
    started = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(more_demand)
        await gate.wait_turn(Priority.BACKGROUND, quiet)
        assert anyio.current_time() - started == pytest.approx(0.11 + quiet)
    started = anyio.current_time()
    await gate.wait_turn(Priority.PREFETCH)
    assert anyio.current_time() == started

    # `since` starts the quiet period without any activity (a fill's first range).
    started = anyio.current_time()
    await gate.wait_turn(Priority.BACKGROUND, quiet, since=started)
    assert anyio.current_time() - started == pytest.approx(quiet)


async def test_a_read_that_needed_no_fetch_restarts_the_quiet_period() -> None:
    """Cache hits of a starting container count as demand: a fill waits for them too."""
    gate = PriorityGate()
    quiet = 0.3
    with gate.active(Priority.DEMAND):
        await anyio.sleep(0.01)

    async def hits() -> None:
        for _ in range(3):
            await anyio.sleep(0.2)
            gate.touched(Priority.DEMAND)

    started = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(hits)
        await gate.wait_turn(Priority.BACKGROUND, quiet)
    # The last hit came 0.6 s in; the fill went on a quiet period after it.
    assert anyio.current_time() - started == pytest.approx(0.6 + quiet)


def test_reason_labels() -> None:
    assert [p.reason for p in Priority] == ["demand", "prefetch", "background"]
