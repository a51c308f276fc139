"""A caller's deadline on read_range: no attempt after it, the one in flight cancelled at it.

Over httpx.MockTransport on a virtual clock (tests.unit.virtual_clock): every wait lasts
exactly what the client chose, so the tests count requests and read the virtual clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from lazyimage.errors import UnavailableError
from lazyimage.registry import CallBound, Reference, RegistryClient, RetryPolicy

from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REF = Reference.parse("r.example/app:1")
DIGEST = "sha256:" + "d" * 64
DATA = bytes(range(100))
# Retries every 0.25 s, for far longer than any deadline below.
STEADY = RetryPolicy(
    attempts=100, base_delay=0.25, max_delay=0.25, total_timeout=60.0, jitter=False
)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


Answer = Callable[[int, httpx.Request], "httpx.Response | None"]


class Registry:
    """Answers request number ``n`` (from 0) with ``answer(n, request)``; None: never answers.
    Notes when each request came, on the event loop's clock, and to which host."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.started = anyio.current_time()
        self.times: list[float] = []
        self.hosts: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(anyio.current_time() - self.started)
        self.hosts.append(request.url.host)
        response = self.answer(len(self.times) - 1, request)
        if response is None:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")
        return response

    def client(self, policy: RetryPolicy = STEADY, **kwargs: Any) -> RegistryClient:
        return RegistryClient(retry=policy, transport=httpx.MockTransport(self), **kwargs)

    @property
    def elapsed(self) -> float:
        return anyio.current_time() - self.started


def _error(code: int) -> httpx.Response:
    return httpx.Response(code, json={"errors": [{"code": "X", "message": "broken"}]})


def _range(request: httpx.Request) -> httpx.Response:
    first, last = (int(n) for n in request.headers["range"].removeprefix("bytes=").split("-"))
    return httpx.Response(
        206,
        content=DATA[first : last + 1],
        headers={"Content-Range": f"bytes {first}-{last}/{len(DATA)}"},
    )


async def test_the_deadline_stops_retries_against_a_failing_registry() -> None:
    registry = Registry(lambda n, request: _error(500))
    async with registry.client() as client:
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() + 1.0)
    # Attempts at 0, 0.25, 0.5 and 0.75 s; one at 1.0 s would start at the deadline.
    assert registry.times == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert registry.elapsed == pytest.approx(0.75)
    message = str(caught.value)
    assert "HTTP 500" in message and "4 attempts" in message
    assert "deadline reached before attempt 5 could start" in message


async def test_the_deadline_cancels_a_stalled_attempt() -> None:
    # The first attempt fails, the second never answers.
    registry = Registry(lambda n, request: _error(503) if n == 0 else None)
    async with registry.client() as client:
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() + 2.0)
    assert registry.times == pytest.approx([0.0, 0.25])
    assert registry.elapsed == pytest.approx(2.0)  # not the policy's 60 s
    message = str(caught.value)
    assert "deadline reached during attempt 2" in message
    assert "last failure: HTTP 503" in message and "2 attempts" in message


async def test_the_deadline_cancels_a_body_that_stops_coming() -> None:
    async def trickle() -> Any:
        yield DATA[:5]
        await anyio.sleep_forever()

    def answer(n: int, request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=trickle(), headers={"Content-Range": "bytes 0-9/100"})

    registry = Registry(answer)
    async with registry.client() as client:
        with pytest.raises(UnavailableError, match="during attempt 1; last failure: none"):
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() + 3.0)
    assert len(registry.times) == 1
    assert registry.elapsed == pytest.approx(3.0)


async def test_no_attempt_starts_after_a_deadline_already_past() -> None:
    registry = Registry(lambda n, request: _range(request))
    async with registry.client() as client:
        with pytest.raises(UnavailableError, match=r"before attempt 1 could start.*0 attempts"):
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() - 1.0)
    assert registry.times == []


async def test_a_deadline_already_past_tries_no_mirror_either() -> None:
    registry = Registry(lambda n, request: _range(request))
    async with registry.client(mirrors={"r.example": ["mirror.test"]}) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time())
    assert registry.times == []
    message = str(caught.value)
    assert message.count("deadline reached") == 1 and "last failure: none" in message


async def test_the_deadline_covers_the_mirrors_too() -> None:
    # The mirror fails, then the registry never answers: the one deadline spans both.
    registry = Registry(
        lambda n, request: _error(500) if request.url.host == "mirror.test" else None
    )
    mirrors = {"r.example": ["mirror.test"]}
    async with registry.client(mirrors=mirrors) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() + 1.5)
    assert registry.hosts == ["mirror.test", "r.example"]
    assert registry.elapsed == pytest.approx(1.5)
    message = str(caught.value)
    assert "deadline reached during attempt 2" in message and "2 attempts" in message
    assert "last failure:" in message and "HTTP 500" in message


async def test_a_deadline_met_changes_nothing() -> None:
    registry = Registry(lambda n, request: _error(502) if n < 2 else _range(request))
    async with registry.client() as client:
        data = await client.read_range(REF, DIGEST, 10, 20, deadline=anyio.current_time() + 5.0)
    assert data == DATA[10:30]
    assert registry.times == pytest.approx([0.0, 0.25, 0.5])


async def test_without_a_deadline_the_policy_alone_bounds_the_read() -> None:
    policy = RetryPolicy(
        attempts=4, base_delay=0.25, max_delay=0.25, total_timeout=60.0, jitter=False
    )
    registry = Registry(lambda n, request: _error(500))
    async with registry.client(policy) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(REF, DIGEST, 0, 10)
    assert len(registry.times) == policy.attempts == client.read_bound.attempts
    assert registry.elapsed == pytest.approx(0.75)
    assert "deadline" not in str(caught.value)
    assert str(caught.value).endswith("HTTP 500: X: broken (gave up after 4 attempts in 0.8 s)")

    stalled = Registry(lambda n, request: None)
    short = RetryPolicy(attempts=4, total_timeout=2.0)
    async with stalled.client(short) as client:
        with pytest.raises(UnavailableError, match="no answer within 2 s"):
            await client.read_range(REF, DIGEST, 0, 10)
    assert len(stalled.times) == 1
    assert stalled.elapsed == pytest.approx(2.0)


async def test_a_failing_call_makes_no_more_attempts_than_its_bound() -> None:
    for answer in (lambda n, r: _error(500), lambda n, r: _error(429)):
        registry = Registry(answer)
        async with registry.client(RetryPolicy(attempts=3, base_delay=0.01)) as client:
            with pytest.raises(UnavailableError):
                await client.read_range(REF, DIGEST, 0, 10)
            assert len(registry.times) == client.read_bound.attempts == 3


def test_the_bound_adds_up() -> None:
    bound = CallBound(attempts=5)
    assert bound.margin == 1.0
    # The server's 5, one per mirror, and two more per host at most (changed credentials,
    # a switch to plain http).
    assert bound.most_attempts() == 7
    assert bound.most_attempts(mirrors=2) == 5 + 2 + 3 * 2


class _Unclosable(httpx.AsyncByteStream):
    """A body that never comes, and whose closing never ends either."""

    async def __aiter__(self) -> Any:
        await anyio.sleep_forever()
        yield b""

    async def aclose(self) -> None:
        await anyio.sleep_forever()


async def test_the_call_returns_within_the_margin_even_if_closing_hangs() -> None:
    def answer(n: int, request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, stream=_Unclosable(), headers={"Content-Range": "bytes 0-9/100"})

    registry = Registry(answer)
    async with registry.client() as client:
        with pytest.raises(UnavailableError, match="during attempt 1"):
            await client.read_range(REF, DIGEST, 0, 10, deadline=anyio.current_time() + 1.0)
        margin = client.read_bound.margin
    assert registry.elapsed == pytest.approx(1.0 + margin)
