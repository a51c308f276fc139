"""The client's retry loop in time: backoff, Retry-After, and the bounds in count and time.

Over httpx.MockTransport on a virtual clock (tests.unit.virtual_clock), so each wait is
exactly what the client chose, on any machine. tests/integration/registry/test_faults.py
runs the same faults through a real proxy and registry, and counts the requests there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from lazyimage.errors import UnavailableError
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

from tests.unit.virtual_clock import virtual_trio

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REF = Reference.parse("r.example/app:1")
DIGEST = "sha256:" + "c" * 64
INDEX = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_trio()


class Registry:
    """Answers with ``answer(n)`` for request number ``n`` (from 0) and notes when each
    request came, on the event loop's clock."""

    def __init__(self, answer: Callable[[int], httpx.Response | Exception]) -> None:
        self.answer = answer
        self.started = anyio.current_time()
        self.times: list[float] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(anyio.current_time() - self.started)
        outcome = self.answer(len(self.times) - 1)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def client(self, policy: RetryPolicy) -> RegistryClient:
        return RegistryClient(retry=policy, transport=httpx.MockTransport(self))


def _status(code: int, **headers: str) -> httpx.Response:
    return httpx.Response(code, json={"errors": [{"code": "X", "message": "x"}]}, headers=headers)


async def test_backoff_follows_the_schedule_until_the_attempts_are_spent() -> None:
    registry = Registry(lambda n: _status(503))
    policy = RetryPolicy(
        attempts=4, base_delay=0.05, max_delay=0.1, total_timeout=30.0, jitter=False
    )
    async with registry.client(policy) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_manifest(REF)
    assert registry.times == pytest.approx([0.0, 0.05, 0.15, 0.25])
    assert anyio.current_time() - registry.started == pytest.approx(0.25)
    assert "4 attempts" in str(caught.value) and "no answer within" not in str(caught.value)


async def test_jittered_backoff_stays_within_half_to_full_delay() -> None:
    registry = Registry(lambda n: _status(503))
    policy = RetryPolicy(attempts=5, base_delay=0.2, max_delay=5.0, total_timeout=30.0)
    async with registry.client(policy) as client:
        with pytest.raises(UnavailableError):
            await client.get_manifest(REF)
    waits = [b - a for a, b in zip(registry.times, registry.times[1:], strict=False)]
    assert len(waits) == 4
    for wait, delay in zip(waits, policy.schedule(), strict=True):
        assert delay / 2 - 1e-9 <= wait <= delay + 1e-9


async def test_attempts_stop_at_the_time_bound() -> None:
    registry = Registry(lambda n: _status(502))
    policy = RetryPolicy(
        attempts=1000, base_delay=0.25, max_delay=0.25, total_timeout=1.0, jitter=False
    )
    async with registry.client(policy) as client:
        with pytest.raises(UnavailableError, match="502") as caught:
            await client.get_manifest(REF)
    # A fifth attempt could not start before the bound: the client gave up at once rather
    # than sleep into it.
    assert registry.times == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert anyio.current_time() - registry.started == pytest.approx(0.75)
    assert "4 attempts" in str(caught.value)


async def test_retry_after_replaces_the_backoff() -> None:
    registry = Registry(
        lambda n: (
            _status(429, **{"Retry-After": "1"}) if n == 0 else httpx.Response(200, content=INDEX)
        )
    )
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=2.0, total_timeout=20.0)
    async with registry.client(policy) as client:
        await client.get_manifest(REF)
    assert registry.times == pytest.approx([0.0, 1.0])


async def test_retry_after_is_capped_at_max_delay() -> None:
    registry = Registry(
        lambda n: (
            _status(429, **{"Retry-After": "3600"}) if n < 2 else httpx.Response(200, content=INDEX)
        )
    )
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.3, total_timeout=20.0)
    async with registry.client(policy) as client:
        await client.get_manifest(REF)
    assert registry.times == pytest.approx([0.0, 0.3, 0.6])


async def test_connection_errors_are_retried_on_the_schedule() -> None:
    registry = Registry(lambda n: httpx.ConnectError("refused"))
    policy = RetryPolicy(
        attempts=3, base_delay=0.05, max_delay=0.1, total_timeout=10.0, jitter=False
    )
    async with registry.client(policy) as client:
        with pytest.raises(UnavailableError, match="ConnectError") as caught:
            await client.read_range(REF, DIGEST, 0, 10)
    assert registry.times == pytest.approx([0.0, 0.05, 0.15])
    assert "3 attempts" in str(caught.value)


async def test_a_stalled_operation_is_cut_at_the_total_timeout() -> None:
    async def stall(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    policy = RetryPolicy(attempts=5, base_delay=0.01, total_timeout=1.0)
    started = anyio.current_time()
    async with RegistryClient(retry=policy, transport=httpx.MockTransport(stall)) as client:
        with pytest.raises(UnavailableError, match="no answer within 1 s"):
            await client.get_manifest(REF)
    assert anyio.current_time() - started == pytest.approx(1.0)
