"""RegistryClient.read_range with a stall timeout and a retry callback."""

from __future__ import annotations

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
    async with RegistryClient(insecure_registries=(proxy.host,), retry=FAST_RETRY) as client:
        await client.push_blob(ref, BLOB, digest, len(BLOB))
        proxy.add(Fault.stall(10.0, after=after), method="GET", path="/blobs/")
        started = anyio.current_time()
        data = await client.read_range(
            ref, digest, 4096, 500_000, stall_timeout=0.5, on_retry=causes.append
        )
        elapsed = anyio.current_time() - started
    assert data == BLOB[4096 : 4096 + 500_000]
    assert 0.5 <= elapsed < 1.5, elapsed
    assert len(causes) == 1 and "ReadTimeout" in causes[0]


async def test_without_a_stall_timeout_the_client_timeout_applies(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/stall/blob:2")
    digest = sha256_digest(BLOB)
    async with RegistryClient(
        insecure_registries=(proxy.host,), retry=FAST_RETRY, timeout=1.5
    ) as client:
        await client.push_blob(ref, BLOB, digest, len(BLOB))
        proxy.add(Fault.stall(10.0), method="GET", path="/blobs/")
        started = anyio.current_time()
        await client.read_range(ref, digest, 0, 100)
        assert 1.5 <= anyio.current_time() - started < 2.5


async def test_an_invalid_stall_timeout(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/stall/blob:3")
    async with RegistryClient(insecure_registries=(registry.host,)) as client:
        with pytest.raises(ValueError):
            await client.read_range(ref, sha256_digest(BLOB), 0, 10, stall_timeout=0)
