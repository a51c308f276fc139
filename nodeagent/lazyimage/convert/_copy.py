"""Copying an image between locations unchanged: every manifest, config and layer."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lazyimage.convert._store import ImageStore, RootManifest
from lazyimage.oci import Descriptor, Index, Manifest

__all__ = ["copy_image"]


async def copy_image(source: ImageStore, target: ImageStore, tmp_dir: Path | None = None) -> str:
    """Copy what ``source`` names to ``target`` byte for byte; return the root digest."""
    root = await source.get_root()
    if root.is_index:
        index = Index.parse(root.data, root.media_type)
        for desc in index.manifests:
            child = await source.get_manifest(desc.digest)
            await _copy_manifest(source, target, child, desc.media_type, tmp_dir, tag=False)
        return await target.put_manifest(root.data, index.media_type, tag=True)
    return await _copy_manifest(source, target, root, root.media_type, tmp_dir, tag=True)


async def _copy_manifest(
    source: ImageStore,
    target: ImageStore,
    root: RootManifest,
    media_type: str,
    tmp_dir: Path | None,
    *,
    tag: bool,
) -> str:
    manifest = Manifest.parse(root.data, root.media_type or media_type)
    for blob in [manifest.config, *manifest.layers]:
        await _copy_blob(source, target, blob, tmp_dir)
    return await target.put_manifest(root.data, manifest.media_type, tag=tag)


async def _copy_blob(
    source: ImageStore, target: ImageStore, desc: Descriptor, tmp_dir: Path | None
) -> None:
    if await target.has_blob(desc.digest):
        return
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="lazyimage-copy-") as tmp:
        path = Path(tmp) / "blob"
        await source.download_blob(desc, path)
        await target.put_blob_file(path, desc.digest, desc.size)
