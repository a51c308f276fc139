"""Retries, bounds and redirects, with real faults injected between client and registry.

These count requests and read errors. None bounds how long a read took from above, which a
loaded machine can stretch; a lower bound (it did wait) only gets truer on a slow one. The
exact waits (backoff, Retry-After, the bounds) are asserted on a virtual clock in
tests/unit/registry/test_client_timing.py. A stall here never ends by itself
(``Fault.stall(math.inf)``), so a read that completes was cut by the client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import anyio
import pytest
from lazyimage.errors import UnavailableError, VerificationError
from lazyimage.oci import sha256_digest
from lazyimage.registry import Credentials, Keychain, Reference, RegistryClient, RetryPolicy

from tests.fixtures.faults import Fault, FaultProxy, ObjectStore
from tests.fixtures.registry import RegistryServer
from tests.integration.registry.helpers import push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.2, total_timeout=20.0, jitter=False)
# A client timeout no test outlasts: only the timeout under test can cut a stall.
NO_TIMEOUT = 3600.0
BLOB_PATH = r"/v2/.+/blobs/(?P<digest>sha256:[0-9a-f]{64})$"


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running


def _client(proxy: FaultProxy, retry: RetryPolicy = FAST, **kwargs: object) -> RegistryClient:
    return RegistryClient(insecure_registries=(proxy.host,), retry=retry, **kwargs)  # type: ignore[arg-type]


async def test_three_server_errors_then_success(
    proxy: FaultProxy, registry: RegistryServer
) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/app:1")
    async with _client(proxy) as client:
        image = await push_image(client, ref, [random_bytes(100, 30)])
        proxy.add(Fault.status(500), method="GET", path="/manifests/", times=3)
        registry.clear_access_log()
        fetched = await client.get_manifest(ref)
    assert fetched.digest == image.manifest_digest
    gets = [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.path]
    assert [r.fault for r in gets] == ["status", "status", "status", None]
    # Only the fourth attempt reached the registry.
    assert [r.status for r in registry.access_log() if "/manifests/" in r.path] == [200]


async def test_retry_bound_in_count_gives_unavailable(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/down:1")
    proxy.add(Fault.status(503), path="/manifests/", times=None)
    policy = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.1, total_timeout=30.0)
    async with _client(proxy, policy) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_manifest(ref)
    assert len(proxy.requests) == 4
    message = str(caught.value)
    assert "503" in message and "4 attempts" in message and "retry/down" in message
    # It stopped at the count, not by running out of time.
    assert "no answer within" not in message
    assert isinstance(caught.value.__cause__, Exception)


async def test_retry_bound_in_time(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/slow:1")
    proxy.add(Fault.status(502), path="/manifests/", times=None)
    policy = RetryPolicy(attempts=1000, base_delay=0.1, max_delay=0.1, total_timeout=1.0)
    started = time.monotonic()
    async with _client(proxy, policy) as client:
        with pytest.raises(UnavailableError, match="502"):
            await client.get_manifest(ref)
    # It kept trying until less than one backoff was left of the bound, then stopped: far
    # short of the 1000 attempts (at most 1 + 1.0 / 0.05 fit in the bound).
    assert time.monotonic() - started >= 1.0 - 0.1
    assert 1 <= len(proxy.requests) <= 21


async def test_429_retry_after_is_honoured_and_bounded(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/limited:1")
    honouring = RetryPolicy(attempts=3, base_delay=0.01, max_delay=2.0, total_timeout=20.0)
    async with _client(proxy, honouring) as client:
        image = await push_image(client, ref, [random_bytes(10, 31)])
        proxy.add(Fault.status(429, retry_after="1"), path="/manifests/")
        started = time.monotonic()
        assert (await client.get_manifest(ref)).digest == image.manifest_digest
        # The backoff is 0.01 s: only Retry-After explains a wait of a second.
        assert time.monotonic() - started >= 1.0

        patient = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.3, total_timeout=20.0)
    async with _client(proxy, patient) as client:
        proxy.add(Fault.status(429, retry_after="3600"), path="/manifests/", times=2)
        started = time.monotonic()
        assert (await client.get_manifest(ref)).digest == image.manifest_digest
        # An hour was asked for, twice: the read could only end because max_delay capped
        # each wait; and it did wait, not just back off 0.01 s.
        assert time.monotonic() - started >= 2 * 0.3
    manifest_gets = [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.path]
    assert [r.fault for r in manifest_gets[-3:]] == ["status", "status", None]


async def test_connection_reset_is_retried(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/reset:1")
    async with _client(proxy) as client:
        image = await push_image(client, ref, [random_bytes(50_000, 32)])
        digest = image.layer_digests[0]
        proxy.add(Fault.reset(), method="GET", path=BLOB_PATH)
        proxy.add(Fault.reset(after=1000), method="GET", path=BLOB_PATH, nth=3)
        assert await client.read_range(ref, digest, 5, 500) == image.layers[0][5:505]
        assert await client.get_blob(ref, digest) == image.layers[0]
    gets = [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    assert [r.fault for r in gets] == ["reset", None, "reset", None]
    # An RST may discard bytes the kernel had already received: resuming is not promised.
    assert gets[3].range is None or gets[3].range == "bytes=1000-"


async def test_truncated_body_is_retried_and_resumed(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/short:1")
    layer = random_bytes(200_000, 33)
    digest = sha256_digest(layer)
    async with _client(proxy) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        proxy.add(Fault.truncate(after=70_000), method="GET", path=BLOB_PATH, nth=1)
        proxy.add(Fault.truncate(after=70_000), method="GET", path=BLOB_PATH, nth=3)
        assert await client.read_range(ref, digest, 100_000, 80_000) == layer[100_000:180_000]
        assert await client.get_blob(ref, digest) == layer
    ranges = [r.range for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    # The range read was cut and asked again; the download was cut at 70,000 bytes and
    # resumed from there instead of starting over.
    assert ranges[:2] == ["bytes=100000-179999", "bytes=100000-179999"]
    assert ranges[2:] == [None, "bytes=70000-"]


async def test_stalled_response_times_out_and_is_retried(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/stall:1")
    async with _client(proxy, timeout=0.5) as client:
        image = await push_image(client, ref, [random_bytes(10, 34)])
        proxy.add(Fault.stall(math.inf), method="GET", path="/manifests/")
        started = time.monotonic()
        assert (await client.get_manifest(ref)).digest == image.manifest_digest
        # The stall never ends: the client's 0.5 s timeout cut it, then it asked again.
        assert time.monotonic() - started >= 0.5
    gets = [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.path]
    assert [r.fault for r in gets] == ["stall", None]


async def test_manifest_not_matching_its_digest_is_refused(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/lying:1")
    async with _client(proxy) as client:
        image = await push_image(client, ref, [random_bytes(10, 35)])
        other = await push_image(client, ref.with_tag("2"), [random_bytes(10, 36)])
        proxy.add(Fault.status(200, body=other.manifest), path="/manifests/sha256:")
        with pytest.raises(VerificationError, match=image.manifest_digest):
            await client.get_manifest(ref.with_digest(image.manifest_digest))


async def test_redirect_to_object_storage_without_authorization(
    auth_registry: RegistryServer,
) -> None:
    with (
        FaultProxy(auth_registry.host) as proxy,
        ObjectStore(auth_registry.storage_dir) as store,
    ):
        keychain = Keychain(
            {proxy.host: Credentials(auth_registry.username, auth_registry.password)}
        )
        ref = Reference.parse(f"{proxy.host}/redirect/app:1")
        async with _client(proxy, keychain=keychain) as client:
            image = await push_image(client, ref, [random_bytes(30_000, 37)])
            digest, layer = image.layer_digests[0], image.layers[0]
            proxy.add(
                Fault.redirect(lambda match: store.sign(match["digest"])),
                method="GET",
                path=BLOB_PATH,
                times=None,
            )
            assert await client.read_range(ref, digest, 0, 51) == layer[:51]
            assert await client.read_range(ref, digest, 20_000, 1000) == layer[20_000:21_000]
            # The second read went straight to the cached storage URL.
            assert len([r for r in proxy.requests if r.fault == "redirect"]) == 1

            store.expire_all()
            assert await client.read_range(ref, digest, 100, 10) == layer[100:110]
            assert await client.get_blob(ref, digest) == layer

        redirects = [r for r in proxy.requests if r.fault == "redirect"]
        assert len(redirects) == 3
        assert all(r.authorization for r in redirects)
        assert [(r.status, r.range) for r in store.requests] == [
            (206, "bytes=0-50"),
            (206, "bytes=20000-20999"),
            (403, "bytes=100-109"),
            (206, "bytes=100-109"),
            (200, None),
        ]
        assert not any(r.authorization for r in store.requests)


async def test_stalled_operation_is_cut_at_the_total_timeout(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/forever:1")
    proxy.add(Fault.stall(math.inf), path="/manifests/", times=None)
    policy = RetryPolicy(attempts=5, base_delay=0.01, total_timeout=1.0)
    started = time.monotonic()
    async with _client(proxy, policy, timeout=NO_TIMEOUT) as client:
        with pytest.raises(UnavailableError, match="no answer within 1 s"):
            await client.get_manifest(ref)
    # Nothing but the total timeout could end this read, and not before it was due.
    assert time.monotonic() - started >= 1.0
    assert [r.fault for r in proxy.requests] == ["stall"]


async def test_a_deadline_stops_the_retries_of_a_range_read(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/deadline:1")
    digest = sha256_digest(b"never served")
    proxy.add(Fault.status(500), path="/blobs/", times=None)
    # Left alone, this policy would retry for 30 s; attempts are at least 0.1 s apart.
    policy = RetryPolicy(attempts=1000, base_delay=0.1, max_delay=0.1, total_timeout=30.0)
    async with _client(proxy, policy) as client:
        deadline = anyio.current_time() + 1.0
        with pytest.raises(UnavailableError) as caught:
            await client.read_range(ref, digest, 0, 10, deadline=deadline)
        assert anyio.current_time() >= deadline - 0.1  # it stopped only for want of time
    # No attempt started after the deadline: with jittered delays of 0.05-0.1 s, 20 at most.
    assert 1 <= len(proxy.requests) <= 20
    message = str(caught.value)
    assert "HTTP 500" in message and "deadline reached before attempt" in message
    assert f"{len(proxy.requests)} attempts" in message


async def test_a_deadline_cancels_a_stalled_range_read(proxy: FaultProxy) -> None:
    ref = Reference.parse(f"{proxy.host}/retry/deadline-stall:1")
    digest = sha256_digest(b"never served")
    proxy.add(Fault.stall(math.inf), path="/blobs/", times=None)
    policy = RetryPolicy(attempts=5, base_delay=0.01, total_timeout=600.0)
    async with _client(proxy, policy, timeout=NO_TIMEOUT) as client:
        deadline = anyio.current_time() + 1.0
        with pytest.raises(UnavailableError, match="deadline reached during attempt 1"):
            await client.read_range(ref, digest, 0, 10, deadline=deadline)
        # Nothing but the deadline could end this read, and not before it was due.
        assert anyio.current_time() >= deadline
    assert [r.fault for r in proxy.requests] == ["stall"]


async def test_blob_size_falls_back_to_a_ranged_get_when_storage_refuses_head(
    registry: RegistryServer,
) -> None:
    with (
        FaultProxy(registry.host) as proxy,
        ObjectStore(registry.storage_dir, allow_head=False) as store,
    ):
        ref = Reference.parse(f"{proxy.host}/redirect/size:1")
        layer = random_bytes(1234, 38)
        digest = sha256_digest(layer)
        async with _client(proxy) as client:
            await client.push_blob(ref, layer, digest, len(layer))
            proxy.add(
                Fault.redirect(lambda match: store.sign(match["digest"])),
                path=BLOB_PATH,
                times=None,
            )
            assert await client.blob_size(ref, digest) == 1234
        assert [(r.method, r.status, r.range) for r in store.requests] == [
            ("HEAD", 403, None),
            ("GET", 206, "bytes=0-0"),
        ]


async def test_failing_storage_sends_range_reads_back_to_the_registry(
    registry: RegistryServer,
) -> None:
    with FaultProxy(registry.host) as proxy:
        store = ObjectStore(registry.storage_dir).start()
        try:
            ref = Reference.parse(f"{proxy.host}/redirect/down:1")
            layer = random_bytes(5000, 39)
            digest = sha256_digest(layer)
            async with _client(proxy) as client:
                await client.push_blob(ref, layer, digest, len(layer))
                rule = proxy.add(
                    Fault.redirect(lambda match: store.sign(match["digest"])), path=BLOB_PATH
                )
                assert await client.read_range(ref, digest, 0, 10) == layer[:10]
                assert rule.applied == 1
                store.stop()
                # The cached storage URL now refuses connections; the registry serves.
                assert await client.read_range(ref, digest, 10, 10) == layer[10:20]
        finally:
            store.stop()
    assert [r.status for r in registry.blob_gets(digest)] == [206]
