"""Shared steps of the agent tests: an eStargz image in a registry, and its layers."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from lazyimage import names
from lazyimage.oci import Descriptor, Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.convert.cli import lazyimage


@dataclass(frozen=True)
class RemoteImage:
    ref: str
    layers: list[Descriptor]  # lowest first

    def toc(self, layer: Descriptor) -> str:
        return layer.annotations[names.TOC_DIGEST_ANNOTATION]

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)


def push_estargz(
    image: TestImage, registry: RegistryServer, name: str, *convert_args: str
) -> RemoteImage:
    """Push ``image`` (gzip) and convert it to eStargz at ``HOST/name``."""
    source = f"{registry.host}/{name}:gzip"
    target = f"{registry.host}/{name}:esgz"
    for args in (
        ("copy", image.ref, source),
        ("convert", source, target, *convert_args),
    ):
        done = lazyimage(*args, "--insecure-registry", registry.host)
        assert done.code == 0, done.err

    async def layers() -> list[Descriptor]:
        async with RegistryClient(insecure_registries=(registry.host,)) as client:
            fetched = await client.get_manifest(Reference.parse(target))
            return Manifest.parse(fetched.data, fetched.media_type).layers

    return RemoteImage(target, anyio.run(layers))


def registry_bytes(
    registry: RegistryServer, digests: list[str], repository: str | None = None
) -> int:
    """Bytes the registry served for these blobs (from ``repository`` only, if given), from its
    own access log."""
    return sum(record.size for d in digests for record in registry.blob_gets(d, repository))
