"""The preloader: layers opened ahead of their Prepare, handed over once, dropped if unused."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from lazyimage import errors
from lazyimage.agent.preload import Preloader
from lazyimage.registry import Reference

pytestmark = pytest.mark.timeout(30)

REF = Reference.parse("registry.test/app:1")


class Opener:
    def __init__(self, delay: float = 0.05, failing: tuple[str, ...] = ()) -> None:
        self.delay = delay
        self.failing = failing
        self.opened: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.dropped: list[str] = []

    async def open(self, ref: Reference, digest: str) -> str:
        assert ref == REF
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await trio.sleep(self.delay)
        finally:
            self.running -= 1
        if digest in self.failing:
            raise errors.UnavailableError("registry down", what=digest)
        self.opened.append(digest)
        return f"layer {digest}"

    def drop(self, value: str) -> None:
        self.dropped.append(value)


def test_layers_open_at_once_and_are_taken_once() -> None:
    opener = Opener()
    preloader = Preloader(opener.open, opener.drop, limit=2)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            assert preloader.start(nursery, REF, ["a", "b", "c"]) == 3
            assert preloader.start(nursery, REF, ["a", "b", "c", "d"]) == 1  # only d is new
            assert "a" in preloader
            assert await preloader.take("a") == "layer a"  # waits for it to open
            assert await preloader.take("a") is None  # handed over once
            assert await preloader.take("zz") is None  # never started
            # Four layers of 50 ms, two at a time: all open after 100 ms, not 200.
            await trio.sleep(0.05 + 0.001)
            assert len(opener.opened) == 4
            assert [await preloader.take(d) for d in "dcb"] == ["layer d", "layer c", "layer b"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert opener.most_at_once == 2
    assert opener.dropped == []


def test_failures_give_none_and_unused_layers_are_dropped() -> None:
    opener = Opener(failing=("bad",))
    preloader = Preloader(opener.open, opener.drop, keep=10.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            preloader.start(nursery, REF, ["bad", "unused"])
            assert await preloader.take("bad") is None
            await trio.sleep(5)
            assert "unused" in preloader and opener.dropped == []
            await trio.sleep(6)
            assert "unused" not in preloader
            assert opener.dropped == ["layer unused"]
            assert await preloader.take("unused") is None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_layer_taken_before_its_turn_waits_for_it() -> None:
    opener = Opener(delay=1.0)
    preloader = Preloader(opener.open, opener.drop, limit=1)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            preloader.start(nursery, REF, ["first", "second"])
            assert await preloader.take("second") == "layer second"
            # One at a time, in whichever order they got the slot.
            assert trio.current_time() in (pytest.approx(1.0), pytest.approx(2.0))
            assert await preloader.take("first") == "layer first"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(opener.opened) == ["first", "second"]
    assert opener.most_at_once == 1
