"""The retry policy (lazyimage.retry): schedule, bounds, deadline; and Retry-After."""

from __future__ import annotations

import email.utils

import pytest
from lazyimage.registry import RegistryClient, RetryPolicy
from lazyimage.registry._http import parse_retry_after
from lazyimage.retry import RetryState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_default_schedule_doubles_and_caps() -> None:
    assert RetryPolicy().schedule() == pytest.approx([0.2, 0.4, 0.8, 1.6])
    policy = RetryPolicy(attempts=8, base_delay=0.5, max_delay=3.0)
    assert policy.schedule() == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0])
    assert RetryPolicy(attempts=1).schedule() == []


def test_policy_is_frozen_and_validated() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1.0)
    with pytest.raises(ValueError):
        RetryPolicy(total_timeout=0.0)


def test_state_counts_attempts() -> None:
    clock = FakeClock()
    state = RetryState(RetryPolicy(attempts=3, jitter=False), clock=clock)
    assert state.next_delay() == pytest.approx(0.2)
    assert state.next_delay() == pytest.approx(0.4)
    assert state.next_delay() is None
    assert state.attempt == 3


def test_state_jitter_stays_within_half_to_full_delay() -> None:
    low = RetryState(RetryPolicy(), clock=FakeClock(), rand=lambda: 0.0)
    high = RetryState(RetryPolicy(), clock=FakeClock(), rand=lambda: 1.0)
    assert low.next_delay() == pytest.approx(0.1)
    assert high.next_delay() == pytest.approx(0.2)


def test_state_stops_at_the_time_bound() -> None:
    clock = FakeClock()
    state = RetryState(
        RetryPolicy(attempts=100, base_delay=1.0, max_delay=1.0, total_timeout=3.5, jitter=False),
        clock=clock,
    )
    delays = []
    starts = [state.elapsed]
    while (delay := state.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
        starts.append(state.elapsed)
        clock.now += 0.2  # the attempt itself takes time too
    # Attempts start at 0, 1.0, 2.2 and 3.4 s; a fifth could not start within 3.5 s.
    assert delays == [1.0, 1.0, 1.0]
    assert starts[-1] <= 3.5


def test_retry_after_replaces_backoff_but_is_capped() -> None:
    state = RetryState(RetryPolicy(max_delay=5.0, jitter=False), clock=FakeClock())
    assert state.next_delay(retry_after=2.0) == 2.0
    assert state.next_delay(retry_after=3600.0) == 5.0
    assert state.next_delay(retry_after=-3.0) == 0.0


def test_retry_after_beyond_the_deadline_gives_up() -> None:
    state = RetryState(RetryPolicy(max_delay=50.0, total_timeout=10.0), clock=FakeClock())
    assert state.next_delay(retry_after=30.0) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(date, now=2_000_000.0) == 0.0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None


def test_a_policy_may_have_no_limit_but_a_registry_client_refuses_it() -> None:
    endless = RetryPolicy(attempts=None, total_timeout=None)
    assert not endless.bounded and RetryPolicy().bounded
    with pytest.raises(ValueError, match="no end"):
        endless.schedule()
    with pytest.raises(ValueError, match="limit of attempts"):
        RegistryClient(retry=endless)
    with pytest.raises(ValueError, match="limit of attempts"):
        RegistryClient(retry=RetryPolicy(total_timeout=None))


def test_jitter_never_goes_below_min_delay() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, min_delay=1.0)
    assert policy.delay(1, rand=lambda: 0.0) == 1.0
    assert policy.delay(3, rand=lambda: 0.0) == 2.0
    assert policy.delay(3, rand=lambda: 1.0) == 4.0
    # A floor above the cap is held to the cap.
    assert RetryPolicy(max_delay=0.5, min_delay=2.0).delay(9, rand=lambda: 0.0) == 0.5


def test_state_starts_no_attempt_after_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=100, base_delay=1.0, max_delay=1.0, jitter=False)
    state = RetryState(policy, clock=clock, deadline=clock.now + 2.5)
    assert state.next_delay() == 1.0
    clock.now += 1.0
    assert state.next_delay() == 1.0
    clock.now += 1.0
    # A third retry would start at 3.0 s, past the deadline at 2.5 s.
    assert state.next_delay() is None
    assert state.past_deadline and state.attempt == 3


def test_state_without_a_deadline_is_never_past_it() -> None:
    clock = FakeClock()
    state = RetryState(RetryPolicy(total_timeout=1.0, jitter=False), clock=clock)
    clock.now += 0.9
    assert state.next_delay() is None
    assert not state.past_deadline


def test_a_backoff_past_the_time_left_becomes_one_last_attempt_before_it() -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        attempts=10, base_delay=0.2, max_delay=2.0, total_timeout=3.0, jitter=False
    )
    state = RetryState(policy, clock=clock)
    delays = []
    while (delay := state.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    # 0.2, 0.4, 0.8 (1.4 s in), then 1.6 would pass 3 s: the last try starts at 2.8 s
    # instead, base_delay before the end, and none follows it.
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.4])
    assert clock.now == pytest.approx(100.0 + 2.8)
