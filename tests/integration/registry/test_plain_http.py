"""A registry that speaks plain http, asked for https without --insecure-registry: the first TLS
failure names it and the flag that fixes it; no retry repeats the handshake."""

from __future__ import annotations

import pytest
from lazyimage.errors import PlainHTTPError
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

from tests.fixtures.faults import FaultProxy
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

# Five attempts, as by default, with short pauses: a retried handshake would show as a count.
FIVE = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, total_timeout=20.0, jitter=False)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_plain_http_registry_is_named_at_the_first_tls_failure(
    registry: RegistryServer,
) -> None:
    # The proxy in front of the real registry speaks plain http and counts connections,
    # handshakes included, which never reach the registry's access log.
    with FaultProxy(registry.host) as proxy:
        host = proxy.host
        ref = Reference.parse(f"{host}/plain/app:1")
        async with RegistryClient(retry=FIVE) as client:
            with pytest.raises(PlainHTTPError) as manifest:
                await client.get_manifest(ref)
            assert proxy.connections_accepted == 2  # one TLS handshake, one plain GET /v2/
            with pytest.raises(PlainHTTPError) as ranged:  # the agent's lazy reads
                await client.read_range(ref, "sha256:" + "a" * 64, 0, 10, stall_timeout=5)
            # One more handshake; the probe may reuse the kept-alive plain connection.
            assert proxy.connections_accepted in (3, 4)
        assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/")] * 2
    for caught in (manifest.value, ranged.value):
        message = str(caught)
        assert f"{host} speaks plain http" in message, message
        assert f"pass --insecure-registry {host}" in message
        assert "plain/app" in message
