"""Synthetic one-layer eStargz images for the filesystem benchmarks.

Each image is written twice: as a plain directory on local disk (the baseline) and as an
eStargz layer (``lazyimage.estargz.build``) pushed to a registry with an OCI config and
manifest, the layer carrying the TOC-digest and uncompressed-size annotations, so that both
the agent's control API and the reference snapshotter's ``rpull`` can mount it.

- :func:`big_file`: one file of ``size`` bytes (the sequential-read benchmark);
- :func:`small_files`: ``count`` files of ``size`` bytes in one directory (open+read);
- :func:`many_entries`: a tree with exactly ``entries`` TOC entries, directories and tiny
  files (the agent-memory benchmark).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from lazyimage import names
from lazyimage.estargz import BuildOptions, build
from lazyimage.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, sha256_digest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import RemoteImage

__all__ = ["SyntheticImage", "big_file", "many_entries", "small_files", "small_files_content"]

_MTIME = 1_700_000_000
_BLOCK = 1 << 20


@dataclass(frozen=True)
class SyntheticImage:
    remote: RemoteImage
    diff_id: str  # also the chain ID of its only layer
    local: Path  # the same tree, unpacked on local disk
    files: list[str]  # regular files, relative paths, in creation order
    entries: int  # TOC entries (directories and files; landmarks not counted)
    blob_size: int
    build_seconds: float

    @property
    def layer(self) -> Descriptor:
        return self.remote.layers[0]

    @property
    def toc_digest(self) -> str:
        return self.remote.toc(self.layer)


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _pseudo_random(seed: int, size: int) -> Iterator[bytes]:
    """Incompressible, reproducible bytes in 1 MiB blocks."""
    rng = random.Random(seed)
    left = size
    while left:
        step = min(left, _BLOCK)
        yield rng.randbytes(step)
        left -= step


def _tar_from_tree(root: Path, members: list[str], tar_path: Path) -> None:
    """A tar of ``members`` (paths under ``root``, parents before children), fixed metadata."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in members:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                with open(root / rel, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _push(
    registry: RegistryServer, name: str, tar_path: Path, work: Path, level: int
) -> tuple[RemoteImage, str, int, float]:
    blob_path = work / f"{tar_path.stem}.esgz"
    started = time.perf_counter()
    with open(blob_path, "wb") as out:
        result = build(tar_path, out, BuildOptions(level=level, tmp_dir=work))
    build_seconds = time.perf_counter() - started
    config = json.dumps(
        {
            "architecture": _architecture(),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [result.diff_id]},
        },
        separators=(",", ":"),
    ).encode()
    layer = Descriptor(
        OCI_LAYER_GZIP,
        result.blob_digest,
        result.blob_size,
        {
            names.TOC_DIGEST_ANNOTATION: result.toc_digest,
            names.UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
        },
    )
    config_desc = Descriptor(OCI_CONFIG, sha256_digest(config), len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.to_json()],
        },
        separators=(",", ":"),
    ).encode()
    ref = Reference.parse(f"{registry.host}/{name}:esgz")

    async def push() -> None:
        async with RegistryClient(insecure_registries=(registry.host,)) as client:
            await client.push_blob(ref, blob_path, result.blob_digest, result.blob_size)
            await client.push_blob(ref, config, config_desc.digest, config_desc.size)
            await client.push_manifest(ref, manifest, OCI_MANIFEST)

    anyio.run(push)
    blob_path.unlink()
    return RemoteImage(str(ref), [layer]), result.diff_id, result.entry_count, build_seconds


def _finish(
    registry: RegistryServer,
    name: str,
    root: Path,
    members: list[str],
    files: list[str],
    work: Path,
    level: int,
) -> SyntheticImage:
    tar_path = work / f"{name.replace('/', '-')}.tar"
    _tar_from_tree(root, members, tar_path)
    remote, diff_id, entries, seconds = _push(registry, name, tar_path, work, level)
    tar_path.unlink()
    return SyntheticImage(
        remote=remote,
        diff_id=diff_id,
        local=root,
        files=files,
        entries=entries,
        blob_size=remote.layers[0].size,
        build_seconds=seconds,
    )


def big_file(
    registry: RegistryServer, work: Path, *, size: int = 256 << 20, name: str = "bench/bigfile"
) -> tuple[SyntheticImage, str]:
    """One ``data/big.bin`` of ``size`` incompressible bytes; also returns its sha256."""
    root = work / "bigfile-local"
    (root / "data").mkdir(parents=True)
    digest = hashlib.sha256()
    with open(root / "data" / "big.bin", "wb") as out:
        for block in _pseudo_random(256, size):
            digest.update(block)
            out.write(block)
    members = ["data", "data/big.bin"]
    # Level 1: the bytes are incompressible anyway, and the build stays quick.
    image = _finish(registry, name, root, members, ["data/big.bin"], work, level=1)
    return image, digest.hexdigest()


def small_files_content(index: int, size: int) -> bytes:
    """The content of small file ``index``: distinct per file, mildly compressible."""
    line = f"file {index:05d} of the open+read benchmark\n".encode()
    return (line * (size // len(line) + 1))[:size]


def small_files(
    registry: RegistryServer,
    work: Path,
    *,
    count: int = 2000,
    size: int = 4096,
    name: str = "bench/smallfiles",
) -> SyntheticImage:
    """``small/fNNNNN`` for ``count`` files of ``size`` bytes each."""
    root = work / "smallfiles-local"
    (root / "small").mkdir(parents=True)
    files = []
    for index in range(count):
        rel = f"small/f{index:05d}"
        (root / rel).write_bytes(small_files_content(index, size))
        files.append(rel)
    return _finish(registry, name, root, ["small", *files], files, work, level=6)


def many_entries(
    registry: RegistryServer,
    work: Path,
    *,
    entries: int = 100_000,
    per_dir: int = 250,
    name: str = "bench/manyentries",
) -> SyntheticImage:
    """Directories of ``per_dir - 1`` tiny files each: ``entries`` TOC entries in all, the
    writer's ``.no.prefetch.landmark`` included."""
    root = work / "manyentries-local"
    root.mkdir(parents=True)
    members: list[str] = []
    files: list[str] = []
    index = 0
    wanted = entries - 1  # the landmark is the last one
    while len(members) < wanted:
        directory = f"d{len(members) // per_dir:04d}"
        (root / directory).mkdir()
        members.append(directory)
        for _ in range(min(per_dir - 1, wanted - len(members))):
            rel = f"{directory}/f{index:06d}"
            (root / rel).write_bytes(b"%d\n" % index)
            members.append(rel)
            files.append(rel)
            index += 1
    image = _finish(registry, name, root, members, files, work, level=6)
    if image.entries != entries:
        raise RuntimeError(f"the layer has {image.entries} TOC entries, not {entries}")
    return image
