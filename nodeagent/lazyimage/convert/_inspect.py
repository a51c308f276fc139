"""Inspecting an image's layers: which are eStargz, their TOCs, sizes and priority zones."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from lazyimage import names
from lazyimage.convert._store import ImageStore
from lazyimage.errors import FormatError, NotFoundError
from lazyimage.estargz import TOC, Node, TOCLoader
from lazyimage.oci import Descriptor, Index, Manifest, Platform, select_platform

__all__ = ["FileInfo", "ImageInspection", "LayerInspection", "inspect_image"]


@dataclass(frozen=True)
class FileInfo:
    path: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    link: str
    nlink: int
    chunks: int


@dataclass(frozen=True)
class LayerInspection:
    index: int
    digest: str
    media_type: str
    size: int
    is_estargz: bool
    reason: str = ""  # why a layer is not (usable) eStargz
    toc_digest: str = ""
    toc_verified: bool = False
    file_count: int = 0
    uncompressed_size: int = 0
    prefetch_zone: int = 0
    toc_bytes: int = 0  # compressed TOC member plus footer
    source_size: int = 0  # the layer's size before conversion, when recorded
    files: list[FileInfo] = field(default_factory=list)

    @property
    def overhead(self) -> float | None:
        """Size against the source layer, e.g. 1.03 for 3 % larger; None if unknown."""
        return self.size / self.source_size if self.source_size else None


@dataclass(frozen=True)
class ImageInspection:
    name: str
    manifest_digest: str
    platform: str
    layers: list[LayerInspection]


async def inspect_image(
    store: ImageStore, platform: Platform, *, with_files: bool = False
) -> ImageInspection:
    root = await store.get_root()
    if root.is_index:
        index = Index.parse(root.data, root.media_type)
        chosen = select_platform(index, platform)
        if chosen is None:
            raise NotFoundError(f"image {store.name} has no {platform} manifest")
        root = await store.get_manifest(chosen.digest)
    manifest = Manifest.parse(root.data, root.media_type)
    config = json.loads(await store.get_blob(manifest.config.digest))
    platform_text = "/".join(
        str(config.get(k, "")) for k in ("os", "architecture", "variant") if config.get(k)
    )
    layers = [
        await _inspect_layer(store, index, layer, with_files)
        for index, layer in enumerate(manifest.layers)
    ]
    return ImageInspection(store.name, root.digest, platform_text, layers)


async def _read_toc(store: ImageStore, layer: Descriptor, expected: str) -> TOC:
    loader = TOCLoader(layer.size, expected_digest=expected)
    rest = loader.feed_tail(await store.read_range(layer, *loader.tail_range))
    if rest is not None:
        loader.feed_rest(await store.read_range(layer, *rest))
    return loader.toc()


async def _inspect_layer(
    store: ImageStore, index: int, layer: Descriptor, with_files: bool
) -> LayerInspection:
    expected = layer.annotations.get(names.TOC_DIGEST_ANNOTATION, "")
    plain = functools.partial(LayerInspection, index, layer.digest, layer.media_type, layer.size)
    if "gzip" not in layer.media_type:
        return plain(is_estargz=False, reason="not a gzip layer")
    try:
        toc = await _read_toc(store, layer, expected)
    except FormatError as exc:
        return plain(is_estargz=False, reason=str(exc))
    uncompressed = layer.annotations.get(names.UNCOMPRESSED_SIZE_ANNOTATION, "")
    source_size = layer.annotations.get(names.SOURCE_SIZE_ANNOTATION, "")
    files = [_file_info(path, node) for path, node in toc.files()] if with_files else []
    return plain(
        is_estargz=True,
        reason="" if expected else "no TOC digest annotation; TOC not verified",
        toc_digest=toc.digest,
        toc_verified=bool(expected),
        file_count=sum(1 for _ in toc.files()),
        uncompressed_size=int(uncompressed) if uncompressed.isdigit() else 0,
        prefetch_zone=toc.prefetch_zone,
        toc_bytes=layer.size - toc.toc_offset,
        source_size=int(source_size) if source_size.isdigit() else 0,
        files=files,
    )


def _file_info(path: str, node: Node) -> FileInfo:
    entry = node.entry
    return FileInfo(
        path=path,
        type=entry.type,
        size=node.size,
        mode=entry.mode & 0o7777,
        uid=entry.uid,
        gid=entry.gid,
        link=entry.link_name,
        nlink=node.nlink,
        chunks=len(node.chunks),
    )
