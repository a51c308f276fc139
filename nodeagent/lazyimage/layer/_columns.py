"""A layer tree's per-node and per-chunk arrays, filled as a TOC walk decides them.

``NodeColumns`` is the sink of ``lazyimage.estargz.TOCWalker`` that ``LayerTree`` is built
from: each entry turns into a few array slots as soon as it is walked, so a large TOC never
exists as entry objects, let alone as a TOC tree. A TOC tree that exists anyway is
replayed into the same columns, so both ways give the same tree.

Values that the arrays cannot hold (an owner past 32 bits, a time or size past 64) and
names that cannot be encoded fail the build, but only after the walk: the TOC's own errors
come first, then the first failing node's, as if the nodes were checked one by one.
"""

from __future__ import annotations

import posixpath
import stat
from array import array
from collections.abc import Mapping

from lazyimage.errors import FormatError, LazyImageError
from lazyimage.estargz import TOC, TOCEntry, parse_modtime

__all__ = ["NO_NAME", "NodeColumns", "fsencode"]

NO_NAME = 0xFFFFFFFF
_MAX_ID = 0xFFFFFFFF
_MAX_U64 = (1 << 64) - 1
_SHA256 = "sha256:"
_TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def fsencode(name: str) -> bytes:
    # TOC names come from tar headers decoded with surrogateescape; this restores the bytes.
    return name.encode("utf-8", "surrogateescape")


def _sha256_bytes(digest: str) -> bytes | None:
    if not digest.startswith(_SHA256) or len(digest) != len(_SHA256) + 64:
        return None
    try:
        return bytes.fromhex(digest[len(_SHA256) :])
    except ValueError:
        return None


def _makedev(major: int, minor: int) -> int:
    # os.makedev's encoding, without its range checks on odd TOC values.
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


class NodeColumns:
    """Implements ``lazyimage.estargz.TOCSink``. Node ``i``'s values are at index ``i``."""

    def __init__(self) -> None:
        self.mode = array("I")
        self.uid = array("I")
        self.gid = array("I")
        self.size = array("Q")
        self.mtime = array("q")
        self.parent = array("I")
        self.links: dict[int, bytes] = {}
        self.rdev: dict[int, int] = {}
        self.xattrs: dict[int, Mapping[bytes, bytes]] = {}
        # Node i's chunks are those from chunk_first[i] up to chunk_first[i + 1].
        self.chunk_first = array("Q")
        self.c_offset = array("Q")
        self.c_end = array("Q")
        self.c_inner = array("Q")
        self.c_file_offset = array("Q")
        self.c_size = array("Q")
        self.c_digest = bytearray()  # 32 bytes per chunk
        self.c_odd_digests: dict[int, str] = {}  # digests that are not sha256
        # Only while building: each directory's entries by path, and each node's path.
        self.children: dict[int, dict[str, int]] = {}
        self.paths: list[str] = []
        self._mtimes: dict[str, int] = {}
        self._problems: dict[int, Exception] = {}  # node id -> why it does not fit
        self._ends_known = True

    @classmethod
    def from_toc(cls, toc: TOC) -> NodeColumns:
        """The columns of a TOC tree (its nodes as they are now), finished."""
        columns = cls()
        for node in toc.nodes:
            columns.add_node(node.id, node.parent, node.path, node.entry)
            for c in node.chunks:
                columns._add_chunk(
                    node.id, c.offset, c.end, c.inner_offset, c.chunk_offset, c.size, c.digest
                )
        for node in toc.nodes:
            for name, child in (node.children or {}).items():
                columns.add_child(node.id, posixpath.join(node.path, name), child)
        columns.finish(toc.toc_offset)
        return columns

    @property
    def count(self) -> int:
        return len(self.paths)

    # TOCSink

    def add_node(self, node_id: int, parent: int, path: str, entry: TOCEntry) -> None:
        assert node_id == len(self.paths), "nodes come in id order"
        self.paths.append(path)
        self.parent.append(parent)
        for column in (self.mode, self.uid, self.gid, self.size, self.mtime):
            column.append(0)
        self.chunk_first.append(len(self.c_offset))
        if entry.type == "dir":
            self.children[node_id] = {}
        self._set(node_id, entry)

    def set_entry(self, node_id: int, entry: TOCEntry) -> None:
        self._set(node_id, entry)

    def add_child(self, dir_id: int, path: str, node_id: int) -> None:
        self.children[dir_id][path] = node_id

    def add_chunk(self, node_id: int, entry: TOCEntry, size: int) -> None:
        self._ends_known = False  # the next larger offset is not known yet: see finish
        self._add_chunk(
            node_id,
            entry.offset,
            0,
            entry.inner_offset,
            entry.chunk_offset,
            size,
            entry.chunk_digest,
        )

    # After the walk

    def finish(self, toc_offset: int) -> None:
        """Raise the first node's problem, if any; set the chunks' ends in the blob."""
        if self.count >= NO_NAME:
            raise ValueError(f"a layer of {self.count} nodes does not fit 32-bit node ids")
        if self._problems:
            raise self._problems[min(self._problems)]
        self.chunk_first.append(len(self.c_offset))
        if not self._ends_known:
            # Data offsets never decrease (the walk checked), so a chunk ends where the
            # next larger offset starts, or at the TOC.
            offsets, ends = self.c_offset, self.c_end
            end = toc_offset
            for i in range(len(offsets) - 1, -1, -1):
                if i + 1 < len(offsets) and offsets[i + 1] > offsets[i]:
                    end = offsets[i + 1]
                ends[i] = end
            self._ends_known = True
        self._mtimes.clear()

    # Filling

    def _set(self, i: int, entry: TOCEntry) -> None:
        # The order of the steps is the order in which their failures are reported.
        self._problems.pop(i, None)
        self.links.pop(i, None)
        self.rdev.pop(i, None)
        self.xattrs.pop(i, None)
        self.size[i] = 0
        try:
            self.mode[i] = _TYPE_BITS.get(entry.type, stat.S_IFREG) | (entry.mode & 0o7777)
            if entry.uid > _MAX_ID or entry.gid > _MAX_ID:
                path = self.paths[i]
                raise FormatError(f"{path!r}: owner {entry.uid}:{entry.gid} out of range")
            self.uid[i] = entry.uid
            self.gid[i] = entry.gid
            mtime = self._mtimes.get(entry.modtime)
            if mtime is None:
                mtime = round(parse_modtime(entry.modtime) * 1e9)
                self._mtimes[entry.modtime] = mtime
            self.mtime[i] = mtime
            if entry.type == "reg":
                self.size[i] = entry.size
            elif entry.type == "symlink":
                target = fsencode(entry.link_name)
                self.links[i] = target
                self.size[i] = len(target)
            elif entry.type in ("char", "block"):
                self.rdev[i] = _makedev(entry.dev_major, entry.dev_minor)
            if entry.xattrs:
                self.xattrs[i] = {fsencode(k): v for k, v in entry.xattrs.items()}
        except (LazyImageError, OverflowError, UnicodeError) as exc:
            self._problems[i] = exc  # raised by finish, after the walk

    def _add_chunk(
        self,
        node_id: int,
        offset: int,
        end: int,
        inner_offset: int,
        chunk_offset: int,
        size: int,
        digest: str,
    ) -> None:
        values = (offset, end, inner_offset, chunk_offset, size)
        if min(values) < 0 or max(values) > _MAX_U64:
            try:
                array("Q", values)  # the error the columns would raise
            except OverflowError as exc:
                self._problems.setdefault(node_id, exc)
            values = (0, 0, 0, 0, 0)
        index = len(self.c_offset)
        self.c_offset.append(values[0])
        self.c_end.append(values[1])
        self.c_inner.append(values[2])
        self.c_file_offset.append(values[3])
        self.c_size.append(values[4])
        raw = _sha256_bytes(digest)
        if raw is None:
            self.c_odd_digests[index] = digest
            raw = bytes(32)
        self.c_digest += raw
