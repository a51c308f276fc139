"""The test harness itself: access-log counting, auth outcomes, restarts, fault rules, token
counting."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from lazyimage.errors import UnavailableError
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.registry import Authorization, RegistryServer
from tests.integration.registry.helpers import push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


def _client(server: RegistryServer, retry: RetryPolicy | None = None) -> RegistryClient:
    return RegistryClient(insecure_registries=(server.host,), retry=retry)


async def test_access_log_counts_each_range_read_with_its_bytes(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/log/app:1")
    layer = random_bytes(4096, 40)
    digest = sha256_digest(layer)
    async with _client(registry) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        assert registry.blob_gets(digest) == []
        await client.read_range(ref, digest, 0, 100)
        await client.read_range(ref, digest, 100, 200)
        assert [(r.status, r.size) for r in registry.blob_gets(digest)] == [(206, 100), (206, 200)]
        await client.get_blob(ref, digest)
    records = registry.blob_gets(digest, "log/app")
    assert [(r.status, r.size) for r in records] == [(206, 100), (206, 200), (200, 4096)]
    assert all(r.user_agent.startswith("lazyimage/") for r in records)
    # Harness probes and log markers are not counted.
    assert not [r for r in registry.access_log() if r.path == "/v2/"]


async def test_restart_keeps_port_and_storage(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/restart/app:1")
    port = registry.port
    async with _client(registry) as client:
        image = await push_image(client, ref, [random_bytes(100, 41)])
        registry.restart()
        assert registry.port == port
        assert (await client.get_manifest(ref)).digest == image.manifest_digest


async def test_stopped_registry_is_unavailable_then_back(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/restart/stop:1")
    policy = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1, total_timeout=10.0)
    async with _client(registry, policy) as client:
        image = await push_image(client, ref, [random_bytes(100, 42)])
        registry.stop()
        with pytest.raises(UnavailableError, match="ConnectError") as caught:
            await client.read_range(ref, image.layer_digests[0], 0, 10)
        # Given up after the attempts, not the 10 s bound; the backoff between them is
        # timed on a virtual clock in tests/unit/registry/test_client_timing.py.
        assert "3 attempts" in str(caught.value)
        assert "no answer within" not in str(caught.value)
        registry.start()
        assert await client.read_range(ref, image.layer_digests[0], 0, 10) == image.layers[0][:10]


def test_fault_rules_apply_to_the_nth_match_only(registry: RegistryServer) -> None:
    with FaultProxy(registry.host) as proxy:
        proxy.add(Fault.status(503), method="GET", path=r"^/v2/$", nth=2, times=2)
        statuses = []
        for _ in range(5):
            request = urllib.request.Request(f"{proxy.url}/v2/")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(request, timeout=5) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                exc.close()
    assert statuses == [200, 503, 503, 200, 200]
    assert [r.fault for r in proxy.requests] == [None, "status", "status", None, None]


def test_authorizations_tell_authorized_refused_and_anonymous_requests_apart(
    auth_registry: RegistryServer,
) -> None:
    def get(login: tuple[str, str] | None, repository: str) -> int:
        request = urllib.request.Request(f"{auth_registry.url}/v2/{repository}/manifests/1")
        if login is not None:
            token = base64.b64encode(":".join(login).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    user, password = auth_registry.username, auth_registry.password
    assert get((user, password), "a/app") == 404  # authorized; there is no such manifest
    assert get((user, "wrong"), "b/app") == 401
    assert get(None, "c/app") == 401
    # A password changed at the registry: the old one is refused from then on.
    auth_registry.set_logins({user: "n3w-Pa55"})
    assert get((user, password), "d/app") == 401
    assert get((user, "n3w-Pa55"), "e/app") == 404
    assert auth_registry.authorizations() == [
        Authorization("authorized", user, "a/app"),
        Authorization("refused", user, "b/app"),
        Authorization("anonymous", "", "c/app"),
        Authorization("refused", user, "d/app"),
        Authorization("authorized", user, "e/app"),
    ]
