"""The priority gate: lower priorities wait while higher ones are active."""

from __future__ import annotations

import anyio
import pytest
from lazyimage.fetch import Priority, PriorityGate
from lazyimage.fetch._scheduler import shared_gate

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


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
    passed = anyio.Event()

    async def background() -> None:
        await gate.wait_turn(Priority.BACKGROUND)
        passed.set()

    async with anyio.create_task_group() as group:
        with gate.active(Priority.PREFETCH):
            group.start_soon(background)
            await anyio.sleep(0.05)
            assert not passed.is_set()
            assert not gate.busy_above(Priority.PREFETCH)
        with anyio.fail_after(1):
            await passed.wait()


async def test_shared_gate_is_one_per_event_loop() -> None:
    assert shared_gate() is shared_gate()


def test_reason_labels() -> None:
    assert [p.reason for p in Priority] == ["demand", "prefetch", "background"]
