"""Small images made of random bytes, pushed with the client under test."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from lazyimage.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Platform,
    dumps_canonical,
    sha256_digest,
)
from lazyimage.registry import Reference, RegistryClient

AMD64 = Platform("linux", "amd64")


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


@dataclass(frozen=True)
class PushedImage:
    ref: Reference
    manifest: bytes
    manifest_digest: str
    config: bytes
    layers: tuple[bytes, ...]

    @property
    def layer_digests(self) -> list[str]:
        return [sha256_digest(layer) for layer in self.layers]


async def push_image(
    client: RegistryClient,
    ref: Reference,
    layers: list[bytes],
    platform: Platform = AMD64,
) -> PushedImage:
    """Push config, layers and an OCI manifest; tag it as ``ref.tag`` unless ``ref`` has a
    digest-only target."""
    config_obj: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]},
    }
    if platform.variant:
        config_obj["variant"] = platform.variant
    config = dumps_canonical(config_obj)
    await client.push_blob(ref, config, sha256_digest(config), len(config))
    for layer in layers:
        await client.push_blob(ref, layer, sha256_digest(layer), len(layer))
    manifest = dumps_canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER_GZIP, layer) for layer in layers],
        }
    )
    digest = await client.push_manifest(ref, manifest, OCI_MANIFEST)
    return PushedImage(ref, manifest, digest, config, tuple(layers))


def index_bytes(entries: list[tuple[PushedImage, Platform]]) -> bytes:
    manifests = []
    for image, platform in entries:
        spec = {"os": platform.os, "architecture": platform.architecture}
        if platform.variant:
            spec["variant"] = platform.variant
        manifests.append(descriptor(OCI_MANIFEST, image.manifest, platform=spec))
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, separators=(",", ":")
    ).encode()
