"""Shared steps of the CRI tests: images crafted in the registry, the agent's snapshot events,
and what the registry served for each layer against what the workload read from it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from lazyimage import names
from lazyimage.estargz import open_toc
from lazyimage.oci import Descriptor, ImageConfig, Manifest, sha256_digest
from lazyimage.registry import Keychain, Reference, RegistryClient

from tests.fixtures.agent import AgentClient
from tests.fixtures.containerd import ContainerdServer
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.convert.cli import lazyimage

__all__ = [
    "LayerBytes",
    "RegistryImage",
    "chain_ids",
    "convert_with_reference",
    "layer_bytes",
    "push_gzip",
    "read_image",
    "remote_events",
    "snapshot_results",
    "write_image",
]


def push_gzip(
    image: TestImage, registry: RegistryServer, name: str, env: dict[str, str] | None = None
) -> str:
    """Copy a test image (gzip layers) to ``HOST/name:gzip``."""
    ref = f"{registry.host}/{name}:gzip"
    done = lazyimage("copy", image.ref, ref, "--insecure-registry", registry.host, env=env)
    assert done.code == 0, done.err
    return ref


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The snapshot names containerd gives an image's layers (OCI image spec chain ids)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            text = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chain


# -- images in the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryImage:
    ref: str
    manifest: Manifest
    config: ImageConfig

    @property
    def layers(self) -> list[Descriptor]:
        return self.manifest.layers

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.config.diff_ids)

    def is_estargz(self, layer: Descriptor) -> bool:
        return names.TOC_DIGEST_ANNOTATION in layer.annotations


def _client(registry: RegistryServer, docker_config: Path | None) -> RegistryClient:
    keychain = Keychain.from_docker_config(docker_config) if docker_config else None
    return RegistryClient(keychain=keychain, insecure_registries=(registry.host,))


def read_image(
    registry: RegistryServer, ref: str, *, docker_config: Path | None = None
) -> RegistryImage:
    async def read() -> RegistryImage:
        async with _client(registry, docker_config) as client:
            reference = Reference.parse(ref)
            fetched = await client.get_manifest(reference)
            manifest = Manifest.parse(fetched.data, fetched.media_type)
            config = await client.get_blob(reference, manifest.config.digest)
            return RegistryImage(ref, manifest, ImageConfig.parse(config))

    return anyio.run(read)


def write_image(
    registry: RegistryServer, ref: str, manifest: Manifest, config: ImageConfig
) -> RegistryImage:
    """Push ``config`` and ``manifest`` (with the config descriptor set to ``config``) as
    ``ref``; the layers must be in the repository already."""
    config_bytes = config.to_bytes()
    raw = manifest.to_json()
    raw["config"] = {
        **raw["config"],
        "digest": sha256_digest(config_bytes),
        "size": len(config_bytes),
    }
    data = json.dumps(raw, indent=2).encode()
    final = Manifest.parse(data, manifest.media_type)

    async def write() -> None:
        async with _client(registry, None) as client:
            reference = Reference.parse(ref)
            await client.push_blob(
                reference, config_bytes, sha256_digest(config_bytes), len(config_bytes)
            )
            await client.push_manifest(reference, data, manifest.media_type)

    anyio.run(write)
    return RegistryImage(ref, final, config)


def convert_with_reference(ctr_remote: Path, work: Path, source: str, target: str) -> None:
    """``ctr-remote images convert --estargz --oci`` in a containerd of its own (Debian's ctr
    moves the content in and out: ctr-remote's own pull and push need containerd 2)."""
    with ContainerdServer(work) as containerd:
        ctr = ["ctr", "--address", str(containerd.socket), "--namespace", "convert"]
        remote = [str(ctr_remote), "--address", str(containerd.socket), "--namespace", "convert"]
        for cmd in (
            [*ctr, "content", "fetch", "--plain-http", source],
            [*remote, "images", "convert", "--estargz", "--oci", source, target],
            [*ctr, "images", "push", "--plain-http", target],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"


# -- the agent's side ------------------------------------------------------------------------


def remote_events(agent: AgentClient) -> list[dict[str, Any]]:
    """The snapshotter's ``remote_snapshot`` log events: one per layer Prepare that carried a
    target name, with ``remote_snapshot_prepared`` and (for a fallback) ``reason``."""
    return [e for e in agent.log_events() if e.get("event") == "remote_snapshot"]


def snapshot_results(agent: AgentClient, image: RegistryImage) -> list[dict[str, Any] | None]:
    """For each layer of ``image`` (lowest first), the last remote_snapshot event for its
    chain id, or None when containerd asked nothing for it."""
    last: dict[str, dict[str, Any]] = {}
    for event in remote_events(agent):
        last[str(event.get("target"))] = event
    return [last.get(chain) for chain in image.chain_ids]


@dataclass(frozen=True)
class LayerBytes:
    """What the registry served for one eStargz layer, against what the workload read."""

    digest: str
    served: int  # response bytes of every GET of the blob (the registry's access log)
    first_read: int  # the first GET's bytes: the agent's read of the footer and TOC
    requests: int  # GETs of the blob
    toc_and_footer: int  # from the TOC's offset to the end of the blob
    prefetch_zone: int
    files_read: int
    read_compressed: int  # the compressed extents of the chunks of the files read (union)
    read_uncompressed: int  # the sizes of the files read

    @property
    def budget(self) -> int:
        return self.prefetch_zone + self.toc_and_footer + int(1.2 * self.read_compressed)

    def describe(self) -> str:
        return (
            f"{self.digest[7:19]}: served {self.served:,} B in {self.requests} GETs "
            f"(first {self.first_read:,} B); "
            f"budget {self.budget:,} B = zone "
            f"{self.prefetch_zone:,} + TOC/footer {self.toc_and_footer:,} + 1.2 x "
            f"{self.read_compressed:,} compressed B of {self.files_read} files read "
            f"({self.read_uncompressed:,} B uncompressed)"
        )


def layer_bytes(registry: RegistryServer, agent: AgentClient, layer: Descriptor) -> LayerBytes:
    blob = registry.blob_path(layer.digest)
    size = blob.stat().st_size
    fd = os.open(blob, os.O_RDONLY)
    try:
        toc = open_toc(lambda offset, length: os.pread(fd, length, offset), size)
    finally:
        os.close(fd)
    extents: set[tuple[int, int]] = set()
    uncompressed = 0
    read = agent.profile(layer.digest.split(":", 1)[1])
    for entry in read:
        node = toc.lookup(entry["path"])
        if node is None:
            continue
        uncompressed += node.size
        extents.update((chunk.offset, chunk.end) for chunk in node.chunks)
    compressed = 0
    covered_to = 0
    for start, end in sorted(extents):
        start = max(start, covered_to)
        if end > start:
            compressed += end - start
            covered_to = end
    gets = registry.blob_gets(layer.digest)
    return LayerBytes(
        digest=layer.digest,
        served=sum(record.size for record in gets),
        first_read=gets[0].size if gets else 0,
        requests=len(gets),
        toc_and_footer=size - toc.toc_offset,
        prefetch_zone=toc.prefetch_zone,
        files_read=len(read),
        read_compressed=compressed,
        read_uncompressed=uncompressed,
    )


def docker_config(path: Path, registry: RegistryServer) -> Path:
    """A docker ``config.json`` at ``path`` with ``registry``'s login."""
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    return path


def push_private_estargz(
    image: TestImage, registry: RegistryServer, tmp_path: Path, *convert_args: str
) -> tuple[str, Path]:
    """``image`` converted to eStargz in ``registry`` (with auth) as ``private/python:esgz``;
    its reference and a docker config with the registry's login."""
    config = docker_config(tmp_path / "docker" / "config.json", registry)
    env = {**os.environ, "DOCKER_CONFIG": str(config.parent)}
    source = push_gzip(image, registry, "private/python", env=env)
    ref = f"{registry.host}/private/python:esgz"
    args = ("convert", source, ref, *convert_args, "--insecure-registry", registry.host)
    done = lazyimage(*args, env=env)
    assert done.code == 0, done.err
    return ref, config
