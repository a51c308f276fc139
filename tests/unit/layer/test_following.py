"""LayerTree.chunks_following, and RemoteLayer handing it to its reader (read-ahead)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from lazyimage import estargz
from lazyimage.estargz import Chunk
from lazyimage.layer import Following, LayerTree, RemoteLayer

from tests.layercases import Item
from tests.unit.layer.helpers import Blob, build_items

KiB = 1 << 10


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _package(tmp_path: Path) -> Blob:
    """pkg/ with a few files and a subdirectory between them, then another directory."""
    items = [
        Item("pkg", "dir", mode=0o755),
        Item("pkg/a", "reg", _data(2000, 1)),
        Item("pkg/b", "reg", _data(3000, 2)),
        Item("pkg/link", "symlink", link="a"),
        Item("pkg/c", "reg", _data(4000, 3)),
        Item("pkg/empty", "reg", b""),
        Item("pkg/d", "reg", _data(5000, 4)),
        Item("pkg/sub", "dir", mode=0o755),
        Item("pkg/sub/x", "reg", _data(1000, 5)),
        Item("pkg/e", "reg", _data(1000, 6)),
        Item("other", "dir", mode=0o755),
        Item("other/y", "reg", _data(1000, 7)),
    ]
    return build_items(tmp_path, items, estargz.BuildOptions(chunk_size=4 * KiB))


def _node(blob: Blob, path: str) -> int:
    node = blob.toc.lookup(path)
    assert node is not None
    return node.id


def _paths(chunks: Sequence[Chunk]) -> list[tuple[str, int]]:
    return [(c.path, c.chunk_offset) for c in chunks]


def test_the_files_after_a_file_in_its_directory_in_blob_order(tmp_path: Path) -> None:
    blob = _package(tmp_path)
    tree = LayerTree(blob.toc)
    following = tree.chunks_following(_node(blob, "pkg/a"), 1 << 20)
    # Symlinks and empty files hold no bytes; d has two chunks; pkg/sub/x is in another
    # directory, so the walk ends there even though pkg/e follows later.
    assert _paths(following) == [("pkg/b", 0), ("pkg/c", 0), ("pkg/d", 0), ("pkg/d", 4096)]
    previous = tree.chunks_for(_node(blob, "pkg/a"), 0, 2000)[-1]
    for chunk in following:  # contiguous: one range from the file read to the last
        assert chunk.offset == previous.end
        previous = chunk
    node = blob.toc.lookup("pkg/c")
    assert node is not None
    assert following[1] == node.chunks[0]


def test_the_limit_counts_compressed_bytes_past_the_file(tmp_path: Path) -> None:
    blob = _package(tmp_path)
    tree = LayerTree(blob.toc)
    a = _node(blob, "pkg/a")
    end = tree.chunks_for(a, 0, 2000)[-1].end
    everything = tree.chunks_following(a, 1 << 20)
    for count in range(len(everything) + 1):
        limit = everything[count - 1].end - end if count else 0
        assert tree.chunks_following(a, limit) == everything[:count]
    assert tree.chunks_following(a, 1 << 20, max_nodes=2) == everything[:1]


def test_nothing_follows_the_last_file_of_a_directory_or_a_non_file(tmp_path: Path) -> None:
    blob = _package(tmp_path)
    tree = LayerTree(blob.toc)
    assert tree.chunks_following(_node(blob, "pkg/e"), 1 << 20) == []
    assert tree.chunks_following(_node(blob, "other/y"), 1 << 20) == []
    assert tree.chunks_following(_node(blob, "pkg"), 1 << 20) == []
    assert tree.chunks_following(_node(blob, "pkg/link"), 1 << 20) == []


class Reader:
    """A reader that records the ``following`` it was given."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.following: list[Following | None] = []

    async def chunks(
        self, chunks: Sequence[Chunk], *, following: Following | None = None
    ) -> list[bytes]:
        self.following.append(following)
        return [
            estargz.verify_chunk(c, self.blob.read_at(c.offset, c.end - c.offset)) for c in chunks
        ]

    async def slice(
        self, chunk: Chunk, start: int, length: int, *, following: Following | None = None
    ) -> bytes:
        [data] = await self.chunks([chunk], following=following)
        return data[start : start + length]


@pytest.mark.anyio
@pytest.mark.parametrize("use_slice", [False, True])
async def test_a_read_ahead_layer_tells_its_reader_what_follows(
    tmp_path: Path, use_slice: bool
) -> None:
    blob = _package(tmp_path)
    tree = LayerTree(blob.toc)
    reader = Reader(blob)
    layer = RemoteLayer(
        tree, reader.chunks, read_slice=reader.slice if use_slice else None, read_ahead=True
    )
    a = _node(blob, "pkg/a")
    assert await layer.read(a, 0, 2000) == blob.item("pkg/a").data
    [following] = reader.following
    assert following is not None
    assert following(1 << 20) == tree.chunks_following(a, 1 << 20)

    plain = RemoteLayer(tree, reader.chunks, read_slice=reader.slice if use_slice else None)
    assert await plain.read(a, 0, 2000) == blob.item("pkg/a").data
    assert reader.following[1:] == [None]
