"""The TOC as an indexed tree: nodes with ids, children, link counts and chunk lists."""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from lazyimage import names
from lazyimage.errors import FormatError
from lazyimage.estargz._toc import TOCEntry, clean_name

__all__ = ["ROOT_ID", "TOC", "Chunk", "Node"]

ROOT_ID = 0
_LANDMARKS = (names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK)


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
        root = TOCEntry(name="", type="dir", mode=0o755)
        self.nodes: list[Node] = [Node(ROOT_ID, "", root, ROOT_ID, {})]
        self._by_path: dict[str, int] = {"": ROOT_ID}
        self.prefetch_landmark_offset: int | None = None
        self.has_no_prefetch_landmark = False
        self._build()

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

    def _build(self) -> None:
        data_entries: list[TOCEntry] = []
        chunk_owner: Node | None = None
        expected_chunk_offset = 0
        for index, entry in enumerate(self.entries):
            path = clean_name(entry.name)
            if entry.type == "chunk":
                if chunk_owner is None or chunk_owner.path != path:
                    raise FormatError(f"TOC entry {index}: chunk of {path!r} follows no file")
                if entry.chunk_offset != expected_chunk_offset:
                    raise FormatError(
                        f"TOC entry {index}: chunk of {path!r} at {entry.chunk_offset}, "
                        f"expected {expected_chunk_offset}"
                    )
                expected_chunk_offset = self._add_chunk(chunk_owner, entry, index)
                data_entries.append(entry)
                continue
            self._check_chunks_complete(chunk_owner, expected_chunk_offset)
            chunk_owner = None
            if not path:
                if entry.type != "dir":
                    raise FormatError(f"TOC entry {index}: the layer root is not a directory")
                self.nodes[ROOT_ID].entry = entry
                continue
            if entry.type == "hardlink":
                self._add_hardlink(path, entry, index)
                continue
            node = self._add_node(path, entry)
            if entry.type == "reg" and entry.size > 0:
                if entry.chunk_offset != 0:
                    raise FormatError(f"TOC entry {index}: {path!r} does not start at offset 0")
                expected_chunk_offset = self._add_chunk(node, entry, index)
                data_entries.append(entry)
                chunk_owner = node
            self._note_landmark(path, entry, index)
        self._check_chunks_complete(chunk_owner, expected_chunk_offset)
        self._set_chunk_bounds(data_entries)
        self._count_links()

    def _parent_of(self, path: str) -> int:
        parent_path = posixpath.dirname(path)
        parent_id = self._by_path.get(parent_path)
        if parent_id is None:
            implicit = TOCEntry(name=parent_path, type="dir", mode=0o755)
            return self._add_node(parent_path, implicit).id
        parent = self.nodes[parent_id]
        if parent.children is None:
            raise FormatError(f"{path!r} lies under {parent_path!r}, which is not a directory")
        return parent_id

    def _add_node(self, path: str, entry: TOCEntry) -> Node:
        existing_id = self._by_path.get(path)
        if existing_id is not None:
            existing = self.nodes[existing_id]
            if existing.is_dir and entry.type == "dir":
                existing.entry = entry  # an explicit entry for an implicit parent
                return existing
        parent_id = self._parent_of(path)
        node = Node(len(self.nodes), path, entry, parent_id)
        if entry.type == "dir":
            node.children = {}
        self.nodes.append(node)
        self._by_path[path] = node.id
        children = self.nodes[parent_id].children
        assert children is not None
        children[posixpath.basename(path)] = node.id  # a later entry replaces an earlier one
        return node

    def _add_hardlink(self, path: str, entry: TOCEntry, index: int) -> None:
        target_path = clean_name(entry.link_name)
        target_id = self._by_path.get(target_path)
        if target_id is None:
            raise FormatError(f"TOC entry {index}: hardlink {path!r} to missing {target_path!r}")
        if self.nodes[target_id].is_dir:
            raise FormatError(f"TOC entry {index}: hardlink {path!r} to directory {target_path!r}")
        parent_id = self._parent_of(path)
        self._by_path[path] = target_id
        children = self.nodes[parent_id].children
        assert children is not None
        children[posixpath.basename(path)] = target_id

    def _add_chunk(self, node: Node, entry: TOCEntry, index: int) -> int:
        if entry.offset <= 0:
            raise FormatError(f"TOC entry {index}: data of {node.path!r} has no offset")
        if entry.offset >= self.toc_offset:
            raise FormatError(
                f"TOC entry {index}: offset {entry.offset} of {node.path!r} is past the TOC"
            )
        if not entry.chunk_digest:
            raise FormatError(f"TOC entry {index}: {node.path!r} has no chunkDigest")
        remaining = node.entry.size - entry.chunk_offset
        size = entry.chunk_size or remaining
        if size <= 0 or size > remaining:
            raise FormatError(f"TOC entry {index}: chunk size {size} of {node.path!r} is invalid")
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
        return entry.chunk_offset + size

    @staticmethod
    def _check_chunks_complete(owner: Node | None, covered: int) -> None:
        if owner is not None and covered != owner.entry.size:
            raise FormatError(
                f"chunks of {owner.path!r} cover {covered} of {owner.entry.size} bytes"
            )

    def _note_landmark(self, path: str, entry: TOCEntry, index: int) -> None:
        base = posixpath.basename(path)
        if base not in _LANDMARKS:
            return
        if path != base:
            raise FormatError(f"TOC entry {index}: landmark {path!r} is not at the layer root")
        if entry.type != "reg" or entry.size != 1:
            raise FormatError(f"TOC entry {index}: landmark {path!r} is not a 1-byte file")
        if self.prefetch_landmark_offset is not None or self.has_no_prefetch_landmark:
            raise FormatError(f"TOC entry {index}: more than one landmark")
        if path == names.PREFETCH_LANDMARK:
            self.prefetch_landmark_offset = entry.offset
        else:
            self.has_no_prefetch_landmark = True

    def _set_chunk_bounds(self, data_entries: list[TOCEntry]) -> None:
        previous: tuple[int, int] = (0, -1)
        for entry in data_entries:
            key = (entry.offset, entry.inner_offset)
            if key <= previous:
                raise FormatError(
                    f"TOC data offsets are not increasing at {entry.name!r} "
                    f"(offset {entry.offset}, innerOffset {entry.inner_offset})"
                )
            previous = key
        if self.has_no_prefetch_landmark and data_entries:
            first = clean_name(data_entries[0].name)
            if first != names.NO_PREFETCH_LANDMARK:
                raise FormatError(f"{names.NO_PREFETCH_LANDMARK} is not the first file in the blob")
        offsets = sorted({entry.offset for entry in data_entries})
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
