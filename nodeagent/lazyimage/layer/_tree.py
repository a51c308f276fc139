"""A layer as the kernel must see it, built once from a TOC and then independent of it.

The tree is the overlayfs view of an OCI layer:

- ``.wh.NAME`` shows as a character device 0/0 named ``NAME``; it is hidden when the same
  directory also has a real ``NAME``;
- ``.wh..wh..opq`` is hidden, and its directory reports ``trusted.overlay.opaque = y``;
- the landmarks and the TOC's own name are hidden at the layer root;
- hardlinked names share one node, whose ``nlink`` counts them; a directory's ``nlink`` is
  2 plus its visible subdirectories.

Memory: a parsed TOC tree holds several Python objects per entry (about 1 KB each), so the
tree keeps what it needs in flat arrays and a list of names: about 110 bytes per entry and
72 per chunk. ``LayerTree.from_loader`` fills those arrays while the TOC's JSON is decoded
(``lazyimage.estargz.TOCWalker``), so no TOC tree exists at all: for a 100,000-entry TOC
the peak is about twice the JSON's size, against four and a half times through a TOC tree.
``LayerTree(toc)`` copies a TOC tree that exists anyway, and keeps no reference to it.
Node ids are the TOC's node ids; the root is 0.
"""

from __future__ import annotations

import bisect
import stat
from array import array
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, overload

from lazyimage import names
from lazyimage.estargz import ROOT_ID, TOC, Chunk, TOCInfo, TOCLoader
from lazyimage.layer._columns import NO_NAME, NodeColumns, fsencode

__all__ = ["OPAQUE_XATTR", "ROOT", "Attr", "LayerTree"]

ROOT = ROOT_ID
OPAQUE_XATTR = b"trusted.overlay.opaque"

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_HIDDEN_AT_ROOT = frozenset(
    {names.TOC_TAR_NAME, names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK}
)
_BLOCK = 4096
_NO_NAME = NO_NAME
_SHA256 = "sha256:"
_EMPTY: Mapping[bytes, bytes] = MappingProxyType({})


class Attr(NamedTuple):
    """What ``stat`` reports for a node (the inode number is the filesystem's to assign)."""

    mode: int  # st_mode: type bits and permission bits
    nlink: int
    uid: int
    gid: int
    size: int
    rdev: int
    mtime_ns: int
    blocks: int  # 512-byte units, rounded up to whole 4 KiB blocks


class _Children(Sequence[tuple[bytes, int]]):
    """A directory's entries, sorted by name: a view over the tree's arrays, no copy."""

    __slots__ = ("_count", "_first", "_names", "_nodes")

    def __init__(self, names: list[bytes], nodes: array[int], first: int, count: int) -> None:
        self._names = names
        self._nodes = nodes
        self._first = first
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, int]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[bytes, int]]: ...

    def __getitem__(self, index: int | slice) -> tuple[bytes, int] | Sequence[tuple[bytes, int]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        at = self._first + index
        return self._names[at], self._nodes[at]


class LayerTree:
    """The overlayfs view of one layer: lookups, attributes, listings, links, xattrs, chunks."""

    def __init__(self, toc: TOC) -> None:
        info = TOCInfo(
            toc.digest, toc.toc_offset, toc.prefetch_landmark_offset, toc.has_no_prefetch_landmark
        )
        self._adopt(NodeColumns.from_toc(toc), info)

    @classmethod
    def from_loader(cls, loader: TOCLoader) -> LayerTree:
        """The tree of a blob's TOC, walked straight from the TOC member that ``loader``
        read: no TOC tree is built, so the peak memory is a fraction of ``LayerTree(toc)``'s.
        Raises what ``loader.toc()`` would, for the same TOC."""
        columns, info = loader.walk(NodeColumns)
        columns.finish(info.toc_offset)
        tree = cls.__new__(cls)
        tree._adopt(columns, info)
        return tree

    # Queries

    @property
    def node_count(self) -> int:
        return len(self._mode)

    def lookup(self, dir_id: int, name: bytes) -> int | None:
        """The node named ``name`` in directory ``dir_id``, or None."""
        first = self._first[dir_id]
        end = first + self._count[dir_id]
        at = bisect.bisect_left(self._names, name, first, end)
        if at < end and self._names[at] == name:
            return self._targets[at]
        return None

    def find(self, path: str) -> int | None:
        """The node at ``path`` (relative to the layer's root) reached through directories
        only, never through a symlink, or None."""
        node_id = ROOT
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not self.is_dir(node_id):
                return None
            found = self.lookup(node_id, part.encode("utf-8", "surrogateescape"))
            if found is None:
                return None
            node_id = found
        return node_id

    def attr(self, node_id: int) -> Attr:
        size = self._size[node_id]
        mode = self._mode[node_id]
        blocks = -(-size // _BLOCK) * (_BLOCK // 512) if stat.S_ISREG(mode) else 0
        return Attr(
            mode,
            self._nlink[node_id],
            self._uid[node_id],
            self._gid[node_id],
            size,
            self._rdev.get(node_id, 0),
            self._mtime[node_id],
            blocks,
        )

    def is_dir(self, node_id: int) -> bool:
        return stat.S_ISDIR(self._mode[node_id])

    def size(self, node_id: int) -> int:
        return self._size[node_id]

    def parent(self, node_id: int) -> int:
        """The directory holding the node's first name; the root is its own parent."""
        return self._parent[node_id]

    def children(self, dir_id: int) -> Sequence[tuple[bytes, int]]:
        """``(name, node id)`` of the directory's visible entries, in a stable (sorted) order."""
        return _Children(self._names, self._targets, self._first[dir_id], self._count[dir_id])

    def readlink(self, node_id: int) -> bytes:
        try:
            return self._links[node_id]
        except KeyError:
            raise ValueError(f"node {node_id} is not a symlink") from None

    def xattrs(self, node_id: int) -> Mapping[bytes, bytes]:
        return self._xattrs.get(node_id, _EMPTY)

    def path(self, node_id: int) -> str:
        """The node's path in the layer (its first name for hardlinks); '' for the root."""
        parts: list[bytes] = []
        while node_id != ROOT:
            at = self._name_at[node_id]
            if at == _NO_NAME:
                return ""  # a hidden node has no visible path
            parts.append(self._names[at])
            node_id = self._parent[node_id]
        return b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")

    def chunks_for(self, node_id: int, offset: int, size: int) -> list[Chunk]:
        """The chunks covering file bytes ``[offset, offset+size)``, clipped to the file."""
        end = min(offset + size, self._size[node_id])
        if offset >= end or not stat.S_ISREG(self._mode[node_id]):
            return []
        lo, hi = self._chunk_first[node_id], self._chunk_first[node_id + 1]
        first = bisect.bisect_right(self._c_file_offset, offset, lo, hi) - 1
        last = bisect.bisect_left(self._c_file_offset, end, lo, hi)
        path = self.path(node_id)
        return [self._chunk(i, path) for i in range(max(first, lo), last)]

    def all_chunks(self) -> Iterator[Chunk]:
        """Every chunk of every visible regular file, in node order (the blob's order)."""
        for node_id in range(self.node_count):
            lo, hi = self._chunk_first[node_id], self._chunk_first[node_id + 1]
            if lo < hi and self._nlink[node_id] and stat.S_ISREG(self._mode[node_id]):
                path = self.path(node_id)
                for i in range(lo, hi):
                    yield self._chunk(i, path)

    def _chunk(self, index: int, path: str) -> Chunk:
        digest = self._c_odd_digests.get(index)
        if digest is None:
            digest = _SHA256 + self._c_digest[32 * index : 32 * index + 32].hex()
        return Chunk(
            path,
            self._c_offset[index],
            self._c_end[index],
            self._c_inner[index],
            self._c_file_offset[index],
            self._c_size[index],
            digest,
        )

    # Construction

    def _adopt(self, columns: NodeColumns, info: TOCInfo) -> None:
        """Take the finished columns' arrays, then list each directory's entries."""
        count = columns.count
        self.toc_digest = info.digest
        self.prefetch_zone = info.prefetch_zone  # so prefetch needs no TOC either
        self._mode = columns.mode
        self._uid = columns.uid
        self._gid = columns.gid
        self._size = columns.size
        self._mtime = columns.mtime
        self._parent = columns.parent
        self._nlink = array("I", bytes(4 * count))
        self._first = array("I", bytes(4 * count))  # first entry of a directory
        self._count = array("I", bytes(4 * count))  # number of entries of a directory
        self._name_at = array("I", [_NO_NAME]) * count  # entry holding a node's own name
        self._names: list[bytes] = []  # entry names, sorted within each directory
        self._targets = array("I")  # the node each entry names
        self._links = columns.links
        self._rdev = columns.rdev
        self._xattrs = columns.xattrs
        self._chunk_first = columns.chunk_first
        self._c_offset = columns.c_offset
        self._c_end = columns.c_end
        self._c_inner = columns.c_inner
        self._c_file_offset = columns.c_file_offset
        self._c_size = columns.c_size
        self._c_digest = columns.c_digest
        self._c_odd_digests = columns.c_odd_digests
        self.total_size = 0
        children, paths = columns.children, columns.paths
        columns.children, columns.paths = {}, []
        for dir_id in list(children):  # in node order: parents come before their children
            entries = children.pop(dir_id)  # freed as it goes
            if stat.S_ISDIR(self._mode[dir_id]):
                self._add_directory(dir_id, entries, paths)
        for i in range(count):
            if stat.S_ISREG(self._mode[i]) and self._nlink[i]:
                self.total_size += self._size[i]

    def _add_directory(self, dir_id: int, by_path: dict[str, int], paths: list[str]) -> None:
        children = {path.rpartition("/")[2]: child for path, child in by_path.items()}
        # (shown name, node, whether this is the name the node's own path ends in)
        entries: list[tuple[bytes, int, bool]] = []
        for name, child in children.items():
            shown = self._shown_name(dir_id, name, children)
            if shown is None:
                continue
            if shown != name:
                self._make_whiteout(child)
            is_own = self._parent[child] == dir_id and paths[child].rpartition("/")[2] == name
            entries.append((fsencode(shown), child, is_own))
        if _OPAQUE_MARKER in children:
            self._xattrs[dir_id] = {**self._xattrs.get(dir_id, {}), OPAQUE_XATTR: b"y"}
        entries.sort()
        self._first[dir_id] = len(self._names)
        self._count[dir_id] = len(entries)
        self._nlink[dir_id] += 2
        for entry_name, child, is_own in entries:
            if is_own:
                self._name_at[child] = len(self._names)
            self._names.append(entry_name)
            self._targets.append(child)
            if stat.S_ISDIR(self._mode[child]):
                self._nlink[dir_id] += 1
            else:
                self._nlink[child] += 1

    @staticmethod
    def _shown_name(dir_id: int, name: str, siblings: Mapping[str, int]) -> str | None:
        """The name an entry shows under, or None when it is hidden."""
        if name == _OPAQUE_MARKER:
            return None
        if dir_id == ROOT and name in _HIDDEN_AT_ROOT:
            return None
        if name.startswith(_WHITEOUT_PREFIX):
            target = name[len(_WHITEOUT_PREFIX) :]
            if not target or target in siblings:
                return None  # a real entry of that name wins over its whiteout
            return target
        return name

    def _make_whiteout(self, node_id: int) -> None:
        # overlayfs reads a 0/0 character device as "deleted in this layer".
        self._mode[node_id] = stat.S_IFCHR
        self._uid[node_id] = self._gid[node_id] = 0
        self._size[node_id] = 0
        self._rdev.pop(node_id, None)
        self._links.pop(node_id, None)
        self._xattrs.pop(node_id, None)

    # Neighbours

    def chunks_following(self, node_id: int, limit: int, max_nodes: int = 64) -> list[Chunk]:
        """Chunks of the files right after ``node_id`` in the blob, in its directory.

        Walks the nodes after ``node_id`` (node order is TOC order, the blob's order) and
        takes the chunks of visible regular files whose gzip members continue the blob
        without a gap, while they end at most ``limit`` compressed bytes past the end of
        ``node_id``'s last chunk. Stops at the first file of another directory, at a gap,
        or after ``max_nodes`` nodes, so it costs a few array reads however large the layer.
        """
        lo, hi = self._chunk_first[node_id], self._chunk_first[node_id + 1]
        if lo == hi:
            return []
        end = self._c_end[hi - 1]
        bound = end + limit
        parent = self._parent[node_id]
        found: list[Chunk] = []
        for next_id in range(node_id + 1, min(node_id + 1 + max_nodes, self.node_count)):
            lo, hi = self._chunk_first[next_id], self._chunk_first[next_id + 1]
            if lo == hi:
                continue  # a directory, link or empty file: no bytes in the blob
            if (
                self._parent[next_id] != parent
                or not self._nlink[next_id]
                or not stat.S_ISREG(self._mode[next_id])
            ):
                break
            path = self.path(next_id)
            for index in range(lo, hi):
                if self._c_offset[index] != end or self._c_end[index] > bound:
                    return found
                found.append(self._chunk(index, path))
                end = self._c_end[index]
        return found
