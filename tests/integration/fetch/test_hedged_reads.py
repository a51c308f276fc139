"""RegistrySource hedges a range GET that produces no byte, against a real registry behind
a fault proxy.

The proxy's stall never ends and the stall timeout is longer than the test's timeout, so a
read that returns was answered by its hedge: the test checks which requests reached the
registry, in which order, and what the read returned, never how long it took."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from lazyimage import metrics
from lazyimage.fetch import RegistrySource
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient
from prometheus_client import Counter

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.registry import RegistryServer
from tests.integration.fetch.helpers import FAST_RETRY

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

BLOB = bytes(range(251)) * 4096  # about 1 MiB, no period of a power of two
NEVER = 3600.0


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running


def _count(counter: Counter, digest: str) -> float:
    return float(counter.labels(digest)._value.get())


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
@pytest.mark.parametrize("after", [None, 0], ids=["before-headers", "headers-then-nothing"])
async def test_a_stalled_range_is_overtaken_by_its_hedge(
    after: int | None, proxy: FaultProxy
) -> None:
    ref = Reference.parse(f"{proxy.host}/hedge/blob:1")
    digest = sha256_digest(BLOB)
    async with RegistryClient(
        insecure_registries=(proxy.host,), retry=FAST_RETRY, timeout=NEVER
    ) as client:
        await client.push_blob(ref, BLOB, digest, len(BLOB))
        source = RegistrySource(client, ref, digest, len(BLOB), stall_timeout=NEVER)
        # A few clean reads teach the source the registry's usual latency.
        for n in range(10):
            assert await source.read(n * 1000, 1000) == BLOB[n * 1000 : (n + 1) * 1000]
        hedges = _count(metrics.FETCH_HEDGES, digest)
        retries = _count(metrics.FETCH_RETRIES, digest)
        seen_before = len(proxy.requests)
        proxy.add(Fault.stall(math.inf, after=after), method="GET", path="/blobs/")
        data = await source.read(300_000, 200_000)
    assert data == BLOB[300_000:500_000]
    gets = [r for r in proxy.requests[seen_before:] if r.method == "GET"]
    # The stalled request, then its hedge for the same range, which answered.
    assert [(r.fault, r.range) for r in gets] == [
        ("stall", "bytes=300000-499999"),
        (None, "bytes=300000-499999"),
    ]
    assert _count(metrics.FETCH_HEDGES, digest) == hedges + 1
    assert _count(metrics.FETCH_RETRIES, digest) == retries  # the stall timeout never acted
