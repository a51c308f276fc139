"""Layer blobs for the layer tests: build a case with ``estargz.build`` and read it back."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lazyimage import estargz, names
from lazyimage.estargz import TOC, TOCEntry
from lazyimage.layer import LayerTree

from tests.layercases import CASES, Item, write_tar


@dataclass
class Blob:
    items: list[Item]
    data: bytes
    toc: TOC

    def read_at(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def item(self, name: str) -> Item:
        return next(i for i in self.items if i.name == name)

    def loader(self) -> estargz.TOCLoader:
        """A loader that has read the blob's footer and TOC, as the agent's does."""
        loader = estargz.TOCLoader(len(self.data), tail_size=estargz.FOOTER_SIZE)
        rest = loader.feed_tail(self.read_at(*loader.tail_range))
        if rest is not None:
            loader.feed_rest(self.read_at(*rest))
        return loader


def build_items(
    tmp_path: Path, items: list[Item], options: estargz.BuildOptions | None = None
) -> Blob:
    tar = write_tar(items, tmp_path / "layer.tar")
    out = tmp_path / "layer.esgz"
    with open(out, "wb") as f:
        estargz.build(tar, f, options)
    data = out.read_bytes()
    toc = estargz.open_toc(lambda offset, length: data[offset : offset + length], len(data))
    return Blob(items, data, toc)


def build_case(tmp_path: Path, name: str, options: estargz.BuildOptions | None = None) -> Blob:
    return build_items(tmp_path, CASES[name](), options)


def toc_of(entries: list[TOCEntry]) -> TOC:
    """A TOC straight from entries (no blob): data offsets are made up but consistent."""
    offset = 1
    for entry in entries:
        if entry.type == "reg" and entry.size:
            entry.offset = offset
            entry.chunk_digest = "sha256:" + "0" * 64
            offset += 100
    return TOC(entries, "sha256:" + "1" * 64, offset + 100)


def walk(tree: LayerTree, dir_id: int = 0, prefix: str = "") -> dict[str, int]:
    """Every visible path of the tree and its node id."""
    out: dict[str, int] = {}
    for name, child in tree.children(dir_id):
        path = prefix + name.decode("utf-8", "surrogateescape")
        out[path] = child
        if stat.S_ISDIR(tree.attr(child).mode):
            out.update(walk(tree, child, path + "/"))
    return out


def observe(tree: LayerTree) -> dict[str, object]:
    """Everything a caller can see of a tree, node by node."""
    nodes: list[object] = []
    for node in range(tree.node_count):
        try:
            link: bytes | None = tree.readlink(node)
        except ValueError:
            link = None
        nodes.append(
            (
                tree.attr(node),
                tree.parent(node),
                tree.path(node),
                list(tree.children(node)),
                link,
                dict(tree.xattrs(node)),
                tree.chunks_for(node, 0, tree.size(node)),
            )
        )
    return {
        "digest": tree.toc_digest,
        "zone": tree.prefetch_zone,
        "total": tree.total_size,
        "nodes": nodes,
        "chunks": list(tree.all_chunks()),
    }


def loader_of_json(data: bytes, toc_offset: int) -> estargz.TOCLoader:
    """A loader that has read the tail of a blob whose TOC is ``data``: the TOC member (a
    tar of the JSON) and the footer. No file data is needed to build a tree."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as out:
        info = tarfile.TarInfo(names.TOC_TAR_NAME)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    tail = gzip.compress(tar.getvalue(), compresslevel=1) + estargz.make_footer(toc_offset)
    loader = estargz.TOCLoader(toc_offset + len(tail), tail_size=len(tail))
    assert loader.feed_tail(tail) is None
    return loader
