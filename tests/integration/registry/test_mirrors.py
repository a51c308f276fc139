"""Pull-through mirrors: tried first, with ``?ns=``, and skipped when they fail."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

from tests.fixtures.registry import RegistryServer
from tests.integration.registry.helpers import push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "mirror") as server:
        yield server


def _client(upstream: RegistryServer, mirror: RegistryServer) -> RegistryClient:
    return RegistryClient(
        insecure_registries=(upstream.host, mirror.host),
        mirrors={upstream.host: [mirror.host]},
        retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05),
    )


async def test_mirror_serves_pulls_and_pushes_go_upstream(
    registry: RegistryServer, mirror: RegistryServer
) -> None:
    ref = Reference.parse(f"{registry.host}/mirrored/app:1")
    cached = random_bytes(1000, 50)
    only_upstream = random_bytes(1000, 51)
    async with RegistryClient(insecure_registries=(mirror.host,)) as seed:
        mirror_ref = Reference.parse(f"{mirror.host}/mirrored/app:1")
        await seed.push_blob(mirror_ref, cached, sha256_digest(cached), len(cached))
    mirror.clear_access_log()

    async with _client(registry, mirror) as client:
        image = await push_image(client, ref, [cached, only_upstream])
        assert not [r for r in mirror.access_log() if r.method in ("POST", "PUT")]

        assert await client.get_blob(ref, sha256_digest(cached)) == cached
        assert (
            await client.read_range(ref, sha256_digest(only_upstream), 0, 10) == only_upstream[:10]
        )
        # The mirror has no manifest: the tag resolves upstream.
        assert (await client.get_manifest(ref)).digest == image.manifest_digest

    mirror_gets = [r for r in mirror.access_log() if r.method == "GET"]
    assert [r.status for r in mirror_gets] == [200, 404, 404]
    assert all(f"ns={registry.host}" in urllib.parse.unquote(r.target) for r in mirror_gets)
    upstream_blob_gets = registry.blob_gets(sha256_digest(cached))
    assert upstream_blob_gets == []
    assert [r.status for r in registry.blob_gets(sha256_digest(only_upstream))] == [206]


async def test_unreachable_mirror_falls_back_to_the_registry(
    registry: RegistryServer, mirror: RegistryServer
) -> None:
    ref = Reference.parse(f"{registry.host}/mirrored/down:1")
    mirror.stop()
    async with _client(registry, mirror) as client:
        image = await push_image(client, ref, [random_bytes(100, 52)])
        assert (await client.resolve_image(ref)).manifest_digest == image.manifest_digest
        assert await client.get_blob(ref, image.layer_digests[0]) == image.layers[0]
