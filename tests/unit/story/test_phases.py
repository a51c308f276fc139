"""The story's steps: the limit ends a step, progress shows while it runs, and an enclosing
alarm survives it."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.story.phases import Steps, StepTimeout

pytestmark = pytest.mark.timeout(60)


def test_a_step_says_when_it_began_and_how_long_it_took() -> None:
    said: list[str] = []
    steps = Steps(say=said.append)
    with steps.step("quick", 30):
        pass
    assert said[0].endswith("quick ...")
    assert "quick: done in" in said[1]
    assert list(steps.timings) == ["quick"]


def test_a_step_past_its_limit_is_ended_there() -> None:
    said: list[str] = []
    steps = Steps(say=said.append)
    handler = signal.getsignal(signal.SIGALRM)
    with pytest.raises(StepTimeout, match="slow: not done after 0 s"), steps.step("slow", 0.2):
        threading.Event().wait(30)  # the pytest timeout's bound, far beyond the step's
    assert "slow" not in steps.timings
    assert not any("done in" in line for line in said)
    assert signal.getsignal(signal.SIGALRM) is handler


def test_progress_shows_while_a_step_runs() -> None:
    said: list[str] = []
    steps = Steps(say=said.append, tick_every=0.05)
    with steps.step("long", 30):
        while not any("... long:" in line for line in said):
            time.sleep(0.01)
    assert "(limit 30 s)" in next(line for line in said if "... long:" in line)


def test_an_enclosing_alarm_goes_on_after_the_step() -> None:
    fired = threading.Event()
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 20)
        with Steps(say=lambda _: None).step("inner", 5):
            pass
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 20
        assert not fired.is_set()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
