"""Network faults between the fetcher and a real registry, on the footer, the TOC and chunks.

Every read must still succeed. A stall here never ends by itself and the client's own
timeout outlasts the test, so a read that completes was cut by the stall timeout; the other
faults are survived with every timeout out of reach, so they were noticed as they happened.
How long a read took is bounded only from below (a loaded machine stretches it); the exact
waits are asserted on a virtual clock in tests/unit/fetch/test_fetcher_timing.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from lazyimage import estargz
from lazyimage.errors import UnavailableError
from lazyimage.fetch import FetchConfig, LayerFetcher, read_retry_policy
from lazyimage.registry import RegistryClient

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.registry import RegistryServer
from tests.integration.fetch.helpers import Layer, client_for, layer_fetcher, push_layer, sample

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

BLOB_GET = r"/v2/.+/blobs/sha256:"
# The agent's retry policy for lazy reads, so the timings are the real ones.
DEFAULT_RETRY = read_retry_policy(FetchConfig())
# Longer than any test: a timeout set to this never fires.
NO_TIMEOUT = 3600.0


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running


FAULTS = {
    "503": Fault.status(503),
    "429": Fault.status(429, retry_after="0"),
    "reset": Fault.reset(),
    "reset-mid-body": Fault.reset(after=20),
    "truncated-body": Fault.truncate(after=20),
    "stall": Fault.stall(math.inf),
    "stall-mid-body": Fault.stall(math.inf, after=20),
}


def _patient_client(host: str) -> RegistryClient:
    """The agent's retry policy, and no client timeout that could cut a stall."""
    return RegistryClient(insecure_registries=(host,), retry=DEFAULT_RETRY, timeout=NO_TIMEOUT)


async def _load_toc(fetch: LayerFetcher) -> estargz.TOC:
    # A tail of just the footer, so the TOC is a read of its own.
    loader = estargz.TOCLoader(fetch.source.size, tail_size=estargz.FOOTER_SIZE)
    rest = loader.feed_tail(await fetch.source.read(*loader.tail_range))
    assert rest is not None
    loader.feed_rest(await fetch.source.read(*rest))
    return loader.toc()


def _check(chunks: list[estargz.Chunk], data: list[bytes]) -> None:
    for chunk, got in zip(chunks, data, strict=True):
        assert "sha256:" + hashlib.sha256(got).hexdigest() == chunk.digest


@pytest.mark.parametrize("target", ["footer", "toc", "chunk"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_reads_survive_faults(
    fault: str, target: str, proxy: FaultProxy, registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "faults/layer", tmp_path)
    chunks = layer.chunks("app/")[:6]
    nth = {"footer": 1, "toc": 2, "chunk": 3}[target]
    proxy.add(FAULTS[fault], method="GET", path=BLOB_GET, nth=nth)
    retries = sample("lazyimage_fetch_retries_total", layer=layer.digest)
    hedges = sample("lazyimage_fetch_hedges_total", layer=layer.digest)
    stalls = fault.startswith("stall")
    # Only a stall is given a stall timeout that can fire.
    config = FetchConfig(stall_timeout=1.0 if stalls else NO_TIMEOUT)
    async with _patient_client(proxy.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config, via=proxy.host) as fetch:
            toc = await _load_toc(fetch)
            assert toc.digest == layer.toc.digest
            _check(chunks, await fetch.read(chunks))
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert [r.fault is not None for r in gets] == [i == nth - 1 for i in range(4)]
    if stalls:
        # Overtaken by a hedge (the same range asked again) before the stall timeout,
        # which never had to act.
        assert gets[nth].range == gets[nth - 1].range
        assert sample("lazyimage_fetch_hedges_total", layer=layer.digest) == hedges + 1
        assert sample("lazyimage_fetch_retries_total", layer=layer.digest) == retries
    else:
        assert sample("lazyimage_fetch_retries_total", layer=layer.digest) == retries + 1


async def test_registry_stopped_during_a_read_then_restarted(
    proxy: FaultProxy, registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "faults/restart", tmp_path)
    chunks = layer.chunks("app/")
    # The first GET waits half a second in the proxy: the registry goes down under it.
    proxy.add(Fault.stall(0.5), method="GET", path=BLOB_GET)
    config = FetchConfig(demand_deadline=20.0)
    async with client_for(proxy.host, read_retry_policy(config)) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config, via=proxy.host) as fetch:

            async def outage() -> None:
                await anyio.sleep(0.1)
                await anyio.to_thread.run_sync(registry.stop)
                await anyio.sleep(3.0)
                await anyio.to_thread.run_sync(registry.start)

            started = anyio.current_time()
            async with anyio.create_task_group() as group:
                group.start_soon(outage)
                data = await fetch.read(chunks)
            elapsed = anyio.current_time() - started
    _check(chunks, data)
    # It waited for the registry to come back (and, by succeeding, did so within the
    # 20 s demand deadline).
    assert elapsed > 3.0
    assert sample("lazyimage_fetch_retries_total", layer=layer.digest) >= 2


async def test_registry_that_stays_down_fails_within_the_deadline(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layer = await push_layer(registry.host, "faults/down", tmp_path)
    chunks = layer.chunks("app/")[:3]
    config = FetchConfig(demand_deadline=3.0)
    async with client_for(registry.host, read_retry_policy(config)) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", config) as fetch:
            registry.stop()
            started = anyio.current_time()
            with pytest.raises(UnavailableError) as caught:
                await fetch.read(chunks)
            elapsed = anyio.current_time() - started
            # The layer is not given up: the same read works once the registry is back.
            registry.start()
            _check(chunks, await fetch.read(chunks))
    # It kept trying until the deadline was (all but) spent, then gave up rather than hang;
    # that it gives up by the deadline exactly is asserted on a virtual clock in
    # tests/unit/fetch/test_fetcher_timing.py.
    assert elapsed >= 2.5, elapsed
    assert layer.digest in str(caught.value)


async def test_stall_with_the_default_timeout(
    proxy: FaultProxy, registry: RegistryServer, tmp_path: Path
) -> None:
    """The defaults: when a stalled request's hedge stalls too, the 2 s stall timeout
    cuts them, though they would never end."""
    layer: Layer = await push_layer(registry.host, "faults/default", tmp_path)
    chunks = layer.chunks("app/")[:2]
    proxy.add(Fault.stall(math.inf), method="GET", path=BLOB_GET, times=2)
    async with _patient_client(proxy.host) as client:
        with layer_fetcher(client, layer, tmp_path / "cache", via=proxy.host) as fetch:
            started = anyio.current_time()
            _check(chunks, await fetch.read(chunks))
            elapsed = anyio.current_time() - started
    assert FetchConfig().stall_timeout == 2.0
    assert elapsed >= 2.0, elapsed  # the stall was waited out for the default, no less
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert [r.fault for r in gets] == ["stall", "stall"] + [None] * (len(gets) - 2)
    assert gets[0].range == gets[1].range  # the second was the first one's hedge
