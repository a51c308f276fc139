"""Indexing TOC entries one at a time: paths to node ids, chunks, landmarks, and every check.

The walker keeps only what the checks need (a dict of paths and a few counters); what a
node is made of goes to a sink as it is decided. The TOC tree and the compact layer tree
are two sinks of the same walk, so both accept and reject exactly the same TOCs, and the
layer tree never needs the entries or the TOC tree in memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from lazyimage import names
from lazyimage.errors import FormatError
from lazyimage.estargz._toc import TOCEntry, clean_name, decode_toc_json, parse_toc_json

__all__ = ["ROOT_ID", "TOCInfo", "TOCSink", "TOCWalker", "walk_toc_json"]

ROOT_ID = 0
_LANDMARKS = (names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK)


S = TypeVar("S", bound="TOCSink")


class TOCSink(Protocol):
    """What a walk decides, in TOC order. Node ids count up from the root's 0."""

    def add_node(self, node_id: int, parent: int, path: str, entry: TOCEntry) -> None:
        """A new node; ``entry`` of an implicit parent directory is made up (mode 0755)."""

    def set_entry(self, node_id: int, entry: TOCEntry) -> None:
        """A directory node's entry is replaced (the root, or an explicit entry for an
        implicit parent)."""

    def add_child(self, dir_id: int, path: str, node_id: int) -> None:
        """``path``'s last component, in directory ``dir_id``, names ``node_id`` (a later
        name replaces an earlier one)."""

    def add_chunk(self, node_id: int, entry: TOCEntry, size: int) -> None:
        """The next chunk of a regular file: ``entry``'s offsets and digest, ``size`` bytes.
        Its end in the blob is the next larger data offset, known once the walk ends."""


@dataclass(frozen=True, slots=True)
class TOCInfo:
    """What a TOC says about its blob beyond its nodes."""

    digest: str
    toc_offset: int
    prefetch_landmark_offset: int | None
    has_no_prefetch_landmark: bool

    @property
    def prefetch_zone(self) -> int:
        """Compressed bytes at the start of the blob that hold the prioritized files."""
        return self.prefetch_landmark_offset or 0


class TOCWalker:
    """Feed entries with ``add`` in TOC order, then call ``finish``.

    Both raise FormatError for an invalid TOC; after an error the walker must not be used.
    Errors are raised in the same order as if every entry were checked, then the whole.
    """

    def __init__(self, sink: TOCSink, toc_offset: int) -> None:
        self._sink = sink
        self.toc_offset = toc_offset
        self.by_path: dict[str, int] = {"": ROOT_ID}
        self._paths: list[str] = [""]  # the same str objects as the keys of by_path
        self._is_dir = bytearray(b"\x01")
        self.prefetch_landmark_offset: int | None = None
        self.has_no_prefetch_landmark = False
        self._owner = -1  # the regular file whose chunks may follow
        self._owner_size = 0
        self._expected_chunk_offset = 0
        self._previous_data: tuple[int, int] = (0, -1)
        self._misordered = ""  # the first data entry out of blob order
        self._first_data_path: str | None = None
        sink.add_node(ROOT_ID, ROOT_ID, "", TOCEntry(name="", type="dir", mode=0o755))

    @property
    def node_count(self) -> int:
        return len(self._paths)

    def path_of(self, node_id: int) -> str:
        return self._paths[node_id]

    def add(self, entry: TOCEntry, index: int) -> None:
        path = clean_name(entry.name)
        if entry.type == "chunk":
            if self._owner < 0 or self._paths[self._owner] != path:
                raise FormatError(f"TOC entry {index}: chunk of {path!r} follows no file")
            if entry.chunk_offset != self._expected_chunk_offset:
                raise FormatError(
                    f"TOC entry {index}: chunk of {path!r} at {entry.chunk_offset}, "
                    f"expected {self._expected_chunk_offset}"
                )
            self._add_chunk(self._owner, entry, index)
            return
        self._check_chunks_complete()
        self._owner = -1
        if not path:
            if entry.type != "dir":
                raise FormatError(f"TOC entry {index}: the layer root is not a directory")
            self._sink.set_entry(ROOT_ID, entry)
            return
        if entry.type == "hardlink":
            self._add_hardlink(path, entry, index)
            return
        node_id = self._add_node(path, entry)
        if entry.type == "reg" and entry.size > 0:
            if entry.chunk_offset != 0:
                raise FormatError(f"TOC entry {index}: {path!r} does not start at offset 0")
            self._owner, self._owner_size = node_id, entry.size
            self._add_chunk(node_id, entry, index)
        self._note_landmark(path, entry, index)

    def finish(self, digest: str) -> TOCInfo:
        self._check_chunks_complete()
        self._owner = -1
        if self._misordered:
            raise FormatError(self._misordered)
        first = self._first_data_path
        if self.has_no_prefetch_landmark and first not in (None, names.NO_PREFETCH_LANDMARK):
            raise FormatError(f"{names.NO_PREFETCH_LANDMARK} is not the first file in the blob")
        return TOCInfo(
            digest, self.toc_offset, self.prefetch_landmark_offset, self.has_no_prefetch_landmark
        )

    # The steps of one entry

    def _parent_of(self, path: str) -> int:
        parent_path = posixpath.dirname(path)
        parent_id = self.by_path.get(parent_path)
        if parent_id is None:
            implicit = TOCEntry(name=parent_path, type="dir", mode=0o755)
            return self._add_node(parent_path, implicit)
        if not self._is_dir[parent_id]:
            raise FormatError(f"{path!r} lies under {parent_path!r}, which is not a directory")
        return parent_id

    def _add_node(self, path: str, entry: TOCEntry) -> int:
        is_dir = entry.type == "dir"
        existing = self.by_path.get(path)
        if existing is not None and is_dir and self._is_dir[existing]:
            self._sink.set_entry(existing, entry)  # an explicit entry for an implicit parent
            return existing
        parent_id = self._parent_of(path)
        node_id = len(self._paths)
        self._paths.append(path)
        self._is_dir.append(is_dir)
        self.by_path[path] = node_id
        self._sink.add_node(node_id, parent_id, path, entry)
        self._sink.add_child(parent_id, path, node_id)  # a later entry replaces an earlier one
        return node_id

    def _add_hardlink(self, path: str, entry: TOCEntry, index: int) -> None:
        target_path = clean_name(entry.link_name)
        target_id = self.by_path.get(target_path)
        if target_id is None:
            raise FormatError(f"TOC entry {index}: hardlink {path!r} to missing {target_path!r}")
        if self._is_dir[target_id]:
            raise FormatError(f"TOC entry {index}: hardlink {path!r} to directory {target_path!r}")
        parent_id = self._parent_of(path)
        self.by_path[path] = target_id
        self._sink.add_child(parent_id, path, target_id)

    def _add_chunk(self, node_id: int, entry: TOCEntry, index: int) -> None:
        path = self._paths[node_id]
        if entry.offset <= 0:
            raise FormatError(f"TOC entry {index}: data of {path!r} has no offset")
        if entry.offset >= self.toc_offset:
            raise FormatError(
                f"TOC entry {index}: offset {entry.offset} of {path!r} is past the TOC"
            )
        if not entry.chunk_digest:
            raise FormatError(f"TOC entry {index}: {path!r} has no chunkDigest")
        remaining = self._owner_size - entry.chunk_offset
        size = entry.chunk_size or remaining
        if size <= 0 or size > remaining:
            raise FormatError(f"TOC entry {index}: chunk size {size} of {path!r} is invalid")
        self._sink.add_chunk(node_id, entry, size)
        self._expected_chunk_offset = entry.chunk_offset + size
        self._note_data(path, entry)

    def _note_data(self, path: str, entry: TOCEntry) -> None:
        # Only remembered here: every entry's own checks come before the blob-order ones.
        if self._first_data_path is None:
            self._first_data_path = path
        key = (entry.offset, entry.inner_offset)
        if key <= self._previous_data and not self._misordered:
            self._misordered = (
                f"TOC data offsets are not increasing at {entry.name!r} "
                f"(offset {entry.offset}, innerOffset {entry.inner_offset})"
            )
        self._previous_data = key

    def _check_chunks_complete(self) -> None:
        if self._owner >= 0 and self._expected_chunk_offset != self._owner_size:
            raise FormatError(
                f"chunks of {self._paths[self._owner]!r} cover {self._expected_chunk_offset} "
                f"of {self._owner_size} bytes"
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


class _Fed:
    """Stands in the decoded document for an entry already handed to the walker."""

    __slots__ = ()


_FED = _Fed()


def walk_toc_json(
    data: bytes | str, digest: str, toc_offset: int, make_sink: Callable[[], S]
) -> tuple[S, TOCInfo]:
    """Walk TOC JSON into a new sink while it is decoded, with no entry kept after its turn.

    The result and the errors are those of walking ``parse_toc_json(data)``: the walk's own
    errors wait until the decoder has checked the whole document. If the decoder met
    entry-shaped objects that are not the document's entries (say, under another key), the
    walk is done again from the parsed entries.
    """
    sink = make_sink()
    walker = TOCWalker(sink, toc_offset)
    failed: list[FormatError] = []
    met = 0

    def on_entry(entry: TOCEntry, index: int) -> _Fed:
        nonlocal met
        met += 1
        if not failed:
            try:
                walker.add(entry, index)
            except FormatError as exc:
                failed.append(exc)  # raised once the document is known to be well formed
        return _FED

    entries = decode_toc_json(data, on_entry, _Fed)
    if len(entries) != met:
        sink = make_sink()
        walker = TOCWalker(sink, toc_offset)
        for index, entry in enumerate(parse_toc_json(data)):
            walker.add(entry, index)
        return sink, walker.finish(digest)
    if failed:
        raise failed[0]
    return sink, walker.finish(digest)
