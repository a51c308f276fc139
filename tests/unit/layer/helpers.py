"""Layer blobs for the layer tests: build a case with ``estargz.build`` and read it back."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from lazyimage import estargz
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
