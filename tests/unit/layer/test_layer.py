"""RemoteLayer: file bytes sliced out of verified chunks, and the first-read recorder."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from lazyimage import estargz
from lazyimage.errors import UnavailableError, VerificationError
from lazyimage.layer import AccessRecorder, LayerTree, ProfileEntry, RemoteLayer

from tests.unit.layer.helpers import Blob, build_case

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KiB = 1 << 10


class Reader:
    """A chunk reader over an in-memory blob that remembers what it was asked for."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.calls: list[list[estargz.Chunk]] = []

    async def __call__(self, chunks: Sequence[estargz.Chunk]) -> list[bytes]:
        self.calls.append(list(chunks))
        return [
            estargz.verify_chunk(c, self.blob.read_at(c.offset, c.end - c.offset)) for c in chunks
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _layer(blob: Blob, reader: Reader, clock: Clock | None = None) -> RemoteLayer:
    recorder = AccessRecorder(clock) if clock is not None else AccessRecorder()
    return RemoteLayer(LayerTree(blob.toc), reader, recorder)


def _node(blob: Blob, path: str) -> int:
    node = blob.toc.lookup(path)
    assert node is not None
    return node.id


async def test_reads_return_the_file_bytes_across_chunk_boundaries(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "chunk-boundaries", estargz.BuildOptions(chunk_size=64 * KiB))
    reader = Reader(blob)
    layer = _layer(blob, reader)
    rng = random.Random(7)
    for name in ("exact", "plus-one", "minus-one", "three-chunks"):
        content = blob.item(name).data
        node = _node(blob, name)
        ranges = [(0, 128 * KiB), (64 * KiB - 1, 2), (len(content) - 5, 5), (0, len(content))]
        ranges += [(rng.randrange(len(content)), rng.randrange(1, 300 * KiB)) for _ in range(20)]
        for offset, size in ranges:
            got = await layer.read(node, offset, size)
            assert got == content[offset : offset + size], (name, offset, size)


async def test_a_read_asks_only_for_the_chunks_it_needs(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "chunk-boundaries", estargz.BuildOptions(chunk_size=64 * KiB))
    reader = Reader(blob)
    layer = _layer(blob, reader)
    await layer.read(_node(blob, "exact"), 64 * KiB - 10, 20)
    assert [c.chunk_offset for c in reader.calls[-1]] == [0, 64 * KiB]
    await layer.read(_node(blob, "exact"), 128 * KiB, 64 * KiB)
    assert [c.chunk_offset for c in reader.calls[-1]] == [128 * KiB]


async def test_reads_at_or_past_the_end_are_short_or_empty(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "empty-files")
    reader = Reader(blob)
    layer = _layer(blob, reader)
    assert await layer.read(_node(blob, "c"), 0, 4096) == b"c"
    assert await layer.read(_node(blob, "c"), 1, 4096) == b""
    assert await layer.read(_node(blob, "c"), 10, 1) == b""
    assert await layer.read(_node(blob, "a"), 0, 4096) == b""
    assert len(reader.calls) == 1


async def test_reader_failures_propagate(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "empty-files")

    async def failing(chunks: Sequence[estargz.Chunk]) -> list[bytes]:
        raise UnavailableError("registry down")

    layer = RemoteLayer(LayerTree(blob.toc), failing)
    with pytest.raises(UnavailableError):
        await layer.read(_node(blob, "c"), 0, 1)


@pytest.mark.parametrize("answer", [[b""], [b"cc"], [b"c", b"c"]])
async def test_a_chunk_of_the_wrong_length_is_never_sliced(
    tmp_path: Path, answer: list[bytes]
) -> None:
    blob = build_case(tmp_path, "empty-files")

    async def wrong(chunks: Sequence[estargz.Chunk]) -> list[bytes]:
        return answer

    layer = RemoteLayer(LayerTree(blob.toc), wrong)
    with pytest.raises(VerificationError):
        await layer.read(_node(blob, "c"), 0, 1)


async def test_the_recorder_keeps_first_reads_in_order(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "hardlinks")
    (tmp_path / "other").mkdir()
    extra = build_case(tmp_path / "other", "symlinks")
    clock = Clock()
    layer = _layer(blob, Reader(blob), clock)
    original = _node(blob, "x/original")
    assert layer.recorder.profile() == []
    clock.now = 100.5
    await layer.read(original, 0, 4)
    clock.now = 101.0
    await layer.read(original, 4, 4)
    await layer.read(_node(blob, "third"), 0, 4)  # another name of the same file
    assert layer.recorder.profile() == [ProfileEntry("x/original", 0.5)]
    assert len(layer.recorder) == 1

    other = _layer(extra, Reader(extra), clock)  # each mount counts from its own start
    clock.now = 103.0
    await other.read(_node(extra, "lib/libc.so.6"), 0, 3)
    assert other.recorder.profile() == [ProfileEntry("lib/libc.so.6", 2.0)]


async def test_reads_past_the_end_are_not_recorded(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "empty-files")
    layer = _layer(blob, Reader(blob))
    await layer.read(_node(blob, "a"), 0, 10)
    await layer.read(_node(blob, "c"), 0, 10)
    assert [entry.path for entry in layer.recorder.profile()] == ["c"]
