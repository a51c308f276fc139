"""The TOC as an indexed tree: nodes with ids, children, link counts and chunk lists."""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from lazyimage.estargz._toc import TOCEntry
from lazyimage.estargz._walk import ROOT_ID, TOCWalker

__all__ = ["ROOT_ID", "TOC", "Chunk", "Node"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A verifiable piece of a regular file.

    The compressed bytes ``[offset, end)`` hold a gzip stream whose uncompressed bytes
    ``[inner_offset, inner_offset + size)`` are the file's bytes ``[chunk_offset, +size)``;
    their sha256 must equal ``digest``.
    """

    path: str
    offset: int
    end: int
    inner_offset: int
    chunk_offset: int
    size: int
    digest: str

    @property
    def compressed_size(self) -> int:
        return self.end - self.offset


@dataclass(slots=True)
class Node:
    id: int
    path: str
    entry: TOCEntry
    parent: int
    children: dict[str, int] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    nlink: int = 1

    @property
    def type(self) -> str:
        return self.entry.type

    @property
    def is_dir(self) -> bool:
        return self.entry.type == "dir"

    @property
    def size(self) -> int:
        return self.entry.size if self.entry.type == "reg" else 0


class TOC:
    """A parsed, validated TOC of one eStargz blob."""

    def __init__(self, entries: list[TOCEntry], digest: str, toc_offset: int) -> None:
        self.entries = entries
        self.digest = digest
        self.toc_offset = toc_offset
        self.nodes: list[Node] = []
        walker = TOCWalker(_NodeSink(self.nodes), toc_offset)
        for index, entry in enumerate(entries):
            walker.add(entry, index)
        info = walker.finish(digest)
        self._by_path = walker.by_path
        self.prefetch_landmark_offset = info.prefetch_landmark_offset
        self.has_no_prefetch_landmark = info.has_no_prefetch_landmark
        self._set_chunk_bounds()
        self._count_links()

    # Queries

    def lookup(self, path: str) -> Node | None:
        node_id = self._by_path.get(path.strip("/"))
        return None if node_id is None else self.nodes[node_id]

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def files(self) -> Iterator[tuple[str, Node]]:
        """Every path in the layer (hardlinks included) with its node, in TOC order."""
        for path, node_id in self._by_path.items():
            if path:
                yield path, self.nodes[node_id]

    @property
    def prefetch_zone(self) -> int:
        """Compressed bytes at the start of the blob that hold the prioritized files."""
        return self.prefetch_landmark_offset or 0

    def chunk_at(self, node: Node, file_offset: int) -> Chunk:
        """The chunk of ``node`` holding byte ``file_offset``."""
        if not node.chunks or not 0 <= file_offset < node.size:
            raise IndexError(f"offset {file_offset} outside {node.path!r} ({node.size} bytes)")
        starts = [c.chunk_offset for c in node.chunks]
        return node.chunks[bisect.bisect_right(starts, file_offset) - 1]

    def chunks_for_range(self, node: Node, offset: int, size: int) -> list[Chunk]:
        """The chunks covering file bytes ``[offset, offset+size)``, clipped to the file."""
        end = min(offset + size, node.size)
        if offset >= end:
            return []
        starts = [c.chunk_offset for c in node.chunks]
        first = bisect.bisect_right(starts, offset) - 1
        last = bisect.bisect_left(starts, end)
        return node.chunks[first:last]

    # Construction

    def _set_chunk_bounds(self) -> None:
        offsets = sorted({c.offset for node in self.nodes for c in node.chunks})
        bounds = [*offsets[1:], self.toc_offset]
        ends = {offset: bounds[i] for i, offset in enumerate(offsets)}
        for node in self.nodes:
            node.chunks = [
                Chunk(
                    c.path,
                    c.offset,
                    ends[c.offset],
                    c.inner_offset,
                    c.chunk_offset,
                    c.size,
                    c.digest,
                )
                for c in node.chunks
            ]

    def _count_links(self) -> None:
        for node in self.nodes:
            node.nlink = 2 if node.is_dir else 0
        for node in self.nodes:
            if node.is_dir and node.id != ROOT_ID:
                self.nodes[node.parent].nlink += 1
        for path, node_id in self._by_path.items():
            node = self.nodes[node_id]
            if path and not node.is_dir:
                node.nlink += 1


class _NodeSink:
    """Builds the TOC's nodes from a walk."""

    def __init__(self, nodes: list[Node]) -> None:
        self._nodes = nodes

    def add_node(self, node_id: int, parent: int, path: str, entry: TOCEntry) -> None:
        children: dict[str, int] | None = {} if entry.type == "dir" else None
        self._nodes.append(Node(node_id, path, entry, parent, children))

    def set_entry(self, node_id: int, entry: TOCEntry) -> None:
        self._nodes[node_id].entry = entry

    def add_child(self, dir_id: int, path: str, node_id: int) -> None:
        children = self._nodes[dir_id].children
        assert children is not None
        children[posixpath.basename(path)] = node_id

    def add_chunk(self, node_id: int, entry: TOCEntry, size: int) -> None:
        node = self._nodes[node_id]
        node.chunks.append(
            Chunk(
                path=node.path,
                offset=entry.offset,
                end=0,
                inner_offset=entry.inner_offset,
                chunk_offset=entry.chunk_offset,
                size=size,
                digest=entry.chunk_digest,
            )
        )
