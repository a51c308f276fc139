"""RegistryClient against Debian's docker-registry: manifests, indexes, blobs and ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from lazyimage.errors import (
    NotFoundError,
    RangeNotSupportedError,
    RegistryError,
    VerificationError,
)
from lazyimage.oci import INDEX_TYPES, OCI_INDEX, OCI_MANIFEST, Platform, sha256_digest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.registry import RegistryServer
from tests.integration.registry.helpers import index_bytes, push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


def client_for(server: RegistryServer, **kwargs: object) -> RegistryClient:
    return RegistryClient(insecure_registries=(server.host,), **kwargs)  # type: ignore[arg-type]


async def test_push_then_get_manifest_by_tag_and_by_digest(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/lib/python:3.11")
    async with client_for(registry) as client:
        image = await push_image(client, ref, [random_bytes(3000, 1), random_bytes(100, 2)])

        by_tag = await client.get_manifest(ref)
        by_digest = await client.get_manifest(ref.with_digest(image.manifest_digest))

    assert by_tag.data == image.manifest
    assert by_tag.media_type == OCI_MANIFEST
    assert by_tag.digest == sha256_digest(image.manifest) == image.manifest_digest
    assert by_digest == by_tag


async def test_get_manifest_by_unknown_digest_is_not_found(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/lib/pinned:1")
    async with client_for(registry) as client:
        image = await push_image(client, ref, [random_bytes(10, 3)])
        wrong = "sha256:" + "0" * 64
        with pytest.raises(NotFoundError):
            await client.get_manifest(ref.with_digest(wrong))
        fetched = await client.get_manifest(ref.with_digest(image.manifest_digest))
    assert fetched.digest == image.manifest_digest


async def test_missing_tag_is_not_found_naming_repository_and_tag(
    registry: RegistryServer,
) -> None:
    ref = Reference.parse(f"{registry.host}/lib/absent:nope")
    async with client_for(registry) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_manifest(ref)
    error = caught.value
    assert error.status == 404
    assert error.repository == "lib/absent"
    assert error.registry == registry.host
    assert "lib/absent" in str(error)
    assert "manifest nope" in str(error)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_index_selects_platform_with_optional_variant(registry: RegistryServer) -> None:
    amd64 = Platform("linux", "amd64")
    arm64 = Platform("linux", "arm64", "v8")
    ref = Reference.parse(f"{registry.host}/multi/app:1")
    async with client_for(registry) as client:
        # Children are pushed by digest only, then the index under the tag.
        amd_image = await push_image(client, ref.with_tag("amd"), [random_bytes(50, 4)], amd64)
        arm_image = await push_image(client, ref.with_tag("arm"), [random_bytes(60, 5)], arm64)
        index = index_bytes([(amd_image, amd64), (arm_image, arm64)])
        index_digest = await client.push_manifest(ref, index, OCI_INDEX)

        fetched = await client.get_manifest(ref)
        assert fetched.media_type in INDEX_TYPES

        picked_amd = await client.resolve_image(ref, platform=amd64)
        picked_arm = await client.resolve_image(ref, platform=arm64)
        picked_arm_plain = await client.resolve_image(ref, platform=Platform("linux", "arm64"))
        with pytest.raises(NotFoundError, match="s390x"):
            await client.resolve_image(ref, platform=Platform("linux", "s390x"))

    assert picked_amd.manifest_digest == amd_image.manifest_digest
    assert picked_amd.manifest_data == amd_image.manifest
    assert picked_amd.index is not None and picked_amd.index_digest == index_digest
    assert picked_amd.index_data == index
    assert picked_arm.manifest_digest == arm_image.manifest_digest
    assert picked_arm.manifest.layers[0].digest == arm_image.layer_digests[0]
    assert picked_arm_plain.manifest_digest == arm_image.manifest_digest


async def test_resolve_plain_manifest_has_no_index(shared_registry: RegistryServer) -> None:
    ref = Reference.parse(f"{shared_registry.host}/client/single:1")
    async with client_for(shared_registry) as client:
        image = await push_image(client, ref, [random_bytes(20, 6)])
        resolved = await client.resolve_image(ref)
    assert resolved.index is None and resolved.index_digest is None
    assert resolved.manifest_digest == image.manifest_digest
    assert [d.digest for d in resolved.manifest.layers] == image.layer_digests


async def test_get_blob_verifies_and_detects_corruption(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/verify:1")
    layer = random_bytes(5000, 7)
    digest = sha256_digest(layer)
    async with client_for(registry) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        assert await client.get_blob(ref, digest) == layer

        # Flip one byte in the registry's own storage; the size stays the same.
        stored = registry.blob_path(digest)
        corrupted = bytearray(stored.read_bytes())
        corrupted[1234] ^= 0xFF
        stored.write_bytes(bytes(corrupted))

        with pytest.raises(VerificationError, match=digest):
            await client.get_blob(ref, digest)
        target = registry.base_dir / "download" / "layer"
        target.parent.mkdir()
        with pytest.raises(VerificationError):
            await client.download_blob(ref, digest, target)
    # Nothing unverified is left behind, not even the temporary file.
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_download_blob_streams_to_file_with_progress(
    registry: RegistryServer, tmp_path: Path
) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/download:1")
    layer = random_bytes(3 << 20, 8)
    digest = sha256_digest(layer)
    seen: list[int] = []
    target_dir = tmp_path / "downloads"
    target_dir.mkdir()
    async with client_for(registry) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        size = await client.download_blob(ref, digest, target_dir / "out", progress=seen.append)
    assert size == len(layer)
    assert (target_dir / "out").read_bytes() == layer
    assert seen and seen[-1] == len(layer) and seen == sorted(seen)
    assert [p.name for p in target_dir.iterdir()] == ["out"]


async def test_read_range_returns_exact_bytes_counted_at_the_registry(
    registry: RegistryServer,
) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/range:1")
    layer = random_bytes(10_000, 9)
    digest = sha256_digest(layer)
    async with client_for(registry) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        registry.clear_access_log()

        footer = await client.read_range(ref, digest, len(layer) - 51, 51)
        middle = await client.read_range(ref, digest, 1000, 4096)
        first = await client.read_range(ref, digest, 0, 1)

    assert footer == layer[-51:]
    assert middle == layer[1000:5096]
    assert first == layer[:1]
    gets = registry.blob_gets(digest, "blobs/range")
    assert [(r.status, r.size) for r in gets] == [(206, 51), (206, 4096), (206, 1)]


async def test_read_range_past_the_end_is_an_error(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/pastend:1")
    layer = random_bytes(100, 10)
    digest = sha256_digest(layer)
    async with client_for(registry) as client:
        await client.push_blob(ref, layer, digest, len(layer))
        with pytest.raises(RegistryError) as caught:
            await client.read_range(ref, digest, 90, 20)
    # Go's ServeContent clamps the range to the blob; the client refuses the short answer.
    assert not isinstance(caught.value, RangeNotSupportedError)
    assert caught.value.status == 416
    assert "range 90-109" in str(caught.value)


async def test_has_blob_and_blob_size(shared_registry: RegistryServer) -> None:
    ref = Reference.parse(f"{shared_registry.host}/client/size:1")
    layer = random_bytes(777, 11)
    digest = sha256_digest(layer)
    async with client_for(shared_registry) as client:
        assert not await client.has_blob(ref, digest)
        with pytest.raises(NotFoundError, match="blob"):
            await client.blob_size(ref, digest)
        await client.push_blob(ref, layer, digest, len(layer))
        assert await client.has_blob(ref, digest)
        assert await client.blob_size(ref, digest) == 777


async def test_push_blob_from_file_and_skip_when_present(
    registry: RegistryServer, tmp_path: Path
) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/push:1")
    layer = random_bytes(2 << 20, 12)
    digest = sha256_digest(layer)
    source = tmp_path / "layer"
    source.write_bytes(layer)
    async with client_for(registry) as client:
        await client.push_blob(ref, source, digest, len(layer))
        await client.push_blob(ref, source, digest, len(layer))
        assert await client.get_blob(ref, digest) == layer
    uploads = [r for r in registry.access_log() if r.method in ("POST", "PUT")]
    # One upload session and one PUT: the second push saw the blob and stopped.
    assert [r.method for r in uploads] == ["POST", "PUT"]
    assert registry.blob_path(digest).read_bytes() == layer


async def test_push_blob_refuses_bytes_that_do_not_match(registry: RegistryServer) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/mismatch:1")
    layer = random_bytes(100, 13)
    async with client_for(registry) as client:
        with pytest.raises(VerificationError):
            await client.push_blob(ref, layer, "sha256:" + "1" * 64, len(layer))
    assert not [r for r in registry.access_log() if r.method in ("POST", "PUT")]


async def test_registry_rejects_a_file_whose_digest_is_wrong(
    registry: RegistryServer, tmp_path: Path
) -> None:
    ref = Reference.parse(f"{registry.host}/blobs/wrongfile:1")
    source = tmp_path / "layer"
    source.write_bytes(random_bytes(100, 14))
    async with client_for(registry) as client:
        with pytest.raises(VerificationError):
            await client.push_blob(ref, source, "sha256:" + "2" * 64, 100)
