"""A layer as the kernel must see it, built once from a TOC and then independent of it.

The tree is the overlayfs view of an OCI layer:

- ``.wh.NAME`` shows as a character device 0/0 named ``NAME``; it is hidden when the same
  directory also has a real ``NAME``;
- ``.wh..wh..opq`` is hidden, and its directory reports ``trusted.overlay.opaque = y``;
- the landmarks and the TOC's own name are hidden at the layer root;
- hardlinked names share one node, whose ``nlink`` counts them; a directory's ``nlink`` is
  2 plus its visible subdirectories.

Memory: a parsed TOC holds several Python objects per entry (about 1.6 KB each), so the tree
copies what it needs into flat arrays and a list of names, and keeps no reference to the TOC.
Per entry that is about 110 bytes (arrays, plus one bytes object per name) and 72 bytes
per chunk, so a caller can drop the TOC once the tree is built. Node ids are the TOC's node
ids; the root is 0.
"""

from __future__ import annotations

import bisect
import stat
from array import array
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, overload

from lazyimage import names
from lazyimage.errors import FormatError
from lazyimage.estargz import ROOT_ID, TOC, Chunk, parse_modtime

__all__ = ["OPAQUE_XATTR", "ROOT", "Attr", "LayerTree"]

ROOT = ROOT_ID
OPAQUE_XATTR = b"trusted.overlay.opaque"

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_HIDDEN_AT_ROOT = frozenset(
    {names.TOC_TAR_NAME, names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK}
)
_TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
_BLOCK = 4096
_NO_NAME = 0xFFFFFFFF
_MAX_ID = 0xFFFFFFFF
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


def _fsencode(name: str) -> bytes:
    # TOC names come from tar headers decoded with surrogateescape; this restores the bytes.
    return name.encode("utf-8", "surrogateescape")


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
        nodes = toc.nodes
        count = len(nodes)
        if count >= _NO_NAME:
            raise ValueError(f"a layer of {count} nodes does not fit 32-bit node ids")
        self.toc_digest = toc.digest
        self.prefetch_zone = toc.prefetch_zone  # so prefetch needs no TOC either
        self._mode = array("I", bytes(4 * count))
        self._uid = array("I", bytes(4 * count))
        self._gid = array("I", bytes(4 * count))
        self._size = array("Q", bytes(8 * count))
        self._mtime = array("q", bytes(8 * count))
        self._nlink = array("I", bytes(4 * count))
        self._parent = array("I", bytes(4 * count))
        self._first = array("I", bytes(4 * count))  # first entry of a directory
        self._count = array("I", bytes(4 * count))  # number of entries of a directory
        self._name_at = array("I", [_NO_NAME]) * count  # entry holding a node's own name
        self._names: list[bytes] = []  # entry names, sorted within each directory
        self._targets = array("I")  # the node each entry names
        self._links: dict[int, bytes] = {}
        self._rdev: dict[int, int] = {}
        self._xattrs: dict[int, Mapping[bytes, bytes]] = {}
        self._chunk_first = array("Q", bytes(8 * (count + 1)))
        self._c_offset = array("Q")
        self._c_end = array("Q")
        self._c_inner = array("Q")
        self._c_file_offset = array("Q")
        self._c_size = array("Q")
        self._c_digest = bytearray()
        self._c_odd_digests: dict[int, str] = {}  # digests that are not sha256
        self.total_size = 0
        self._copy_nodes(toc)
        self._copy_entries(toc)

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

    def _copy_nodes(self, toc: TOC) -> None:
        mtimes: dict[str, int] = {}
        for node in toc.nodes:
            i = node.id
            entry = node.entry
            self._mode[i] = _TYPE_BITS.get(entry.type, stat.S_IFREG) | (entry.mode & 0o7777)
            if entry.uid > _MAX_ID or entry.gid > _MAX_ID:
                raise FormatError(f"{node.path!r}: owner {entry.uid}:{entry.gid} out of range")
            self._uid[i] = entry.uid
            self._gid[i] = entry.gid
            self._parent[i] = node.parent
            mtime = mtimes.get(entry.modtime)
            if mtime is None:
                mtime = mtimes[entry.modtime] = round(parse_modtime(entry.modtime) * 1e9)
            self._mtime[i] = mtime
            if entry.type == "reg":
                self._size[i] = entry.size
            elif entry.type == "symlink":
                target = _fsencode(entry.link_name)
                self._links[i] = target
                self._size[i] = len(target)
            elif entry.type in ("char", "block"):
                self._rdev[i] = _makedev(entry.dev_major, entry.dev_minor)
            if entry.xattrs:
                self._xattrs[i] = {_fsencode(k): v for k, v in entry.xattrs.items()}
            for chunk in node.chunks:
                self._add_chunk(chunk)
            self._chunk_first[i + 1] = len(self._c_offset)

    def _add_chunk(self, chunk: Chunk) -> None:
        index = len(self._c_offset)
        self._c_offset.append(chunk.offset)
        self._c_end.append(chunk.end)
        self._c_inner.append(chunk.inner_offset)
        self._c_file_offset.append(chunk.chunk_offset)
        self._c_size.append(chunk.size)
        raw = _sha256_bytes(chunk.digest)
        if raw is None:
            self._c_odd_digests[index] = chunk.digest
            raw = bytes(32)
        self._c_digest += raw

    def _copy_entries(self, toc: TOC) -> None:
        for node in toc.nodes:  # parents come before their children
            if node.children is not None and stat.S_ISDIR(self._mode[node.id]):
                self._add_directory(node.id, node.children, toc)
        for i in range(self.node_count):
            if stat.S_ISREG(self._mode[i]) and self._nlink[i]:
                self.total_size += self._size[i]

    def _add_directory(self, dir_id: int, children: dict[str, int], toc: TOC) -> None:
        # (shown name, node, whether this is the name the node's own path ends in)
        entries: list[tuple[bytes, int, bool]] = []
        for name, child in children.items():
            shown = self._shown_name(dir_id, name, children)
            if shown is None:
                continue
            if shown != name:
                self._make_whiteout(child)
            own = toc.nodes[child]
            is_own = own.parent == dir_id and own.path.rpartition("/")[2] == name
            entries.append((_fsencode(shown), child, is_own))
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


def _makedev(major: int, minor: int) -> int:
    # os.makedev's encoding, without its range checks on odd TOC values.
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


def _sha256_bytes(digest: str) -> bytes | None:
    if not digest.startswith(_SHA256) or len(digest) != len(_SHA256) + 64:
        return None
    try:
        return bytes.fromhex(digest[len(_SHA256) :])
    except ValueError:
        return None
