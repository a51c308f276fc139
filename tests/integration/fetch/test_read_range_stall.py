"""RegistryClient.read_range with a stall timeout and a retry callback.

The proxy's stalls never end by themselves, and the client's own timeout is longer than the
test, so a read that completes was cut by the timeout under test; how long that took is not
asserted from above (a loaded machine stretches it), only that it was not cut early."""

from __future__ import annotations

import math
from collections.abc import Iterator

import anyio
import pytest
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.registry import RegistryServer
from tests.integration.fetch.helpers import FAST_RETRY

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

BLOB = bytes(range(256)) * 4096  # 1 MiB
NO_TIMEOUT = 3600.0


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
@pytest.mark.parametrize("after", [None, 1000], ids=["before-headers", "mid-body"])
async def test_a_stall_is_abandoned_after_the_stall_timeout(
    after: int | None, proxy: FaultProxy
) -> None:
    ref = Reference.parse(f"{proxy.host}/stall/blob:1")
    digest = sha256_digest(BLOB)
    causes: list[str] = []
    async with RegistryClient(
        insecure_registries=(proxy.host,), retry=FAST_RETRY, timeout=NO_TIMEOUT
    ) as client:
        await client.push_blob(ref, BLOB, digest, len(BLOB))
        proxy.add(Fault.stall(math.inf, after=after), method="GET", path="/blobs/")
        started = anyio.current_time()
        data = await client.read_range(
            ref, digest, 4096, 500_000, stall_timeout=0.5, on_retry=causes.append
        )
        elapsed = anyio.current_time() - started
    assert data == BLOB[4096 : 4096 + 500_000]
    assert elapsed >= 0.5, elapsed
    assert len(causes) == 1 and "ReadTimeout" in causes[0]
    assert [r.fault for r in proxy.requests if r.method == "GET"] == ["stall", None]


async def test_without_a_stall_timeout_the_client_timeout_applies(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/stall/blob:2")
    digest = sha256_digest(BLOB)
    async with RegistryClient(
        insecure_registries=(proxy.host,), retry=FAST_RETRY, timeout=1.5
    ) as client:
        await client.push_blob(ref, BLOB, digest, len(BLOB))
        proxy.add(Fault.stall(math.inf), method="GET", path="/blobs/")
        started = anyio.current_time()
        assert await client.read_range(ref, digest, 0, 100) == BLOB[:100]
        assert anyio.current_time() - started >= 1.5
    assert [r.fault for r in proxy.requests if r.method == "GET"] == ["stall", None]


async def test_an_invalid_stall_timeout(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/stall/blob:3")
    async with RegistryClient(insecure_registries=(registry.host,)) as client:
        with pytest.raises(ValueError):
            await client.read_range(ref, sha256_digest(BLOB), 0, 10, stall_timeout=0)
