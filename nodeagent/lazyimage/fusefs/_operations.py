"""The pyfuse3 ``Operations`` of the agent's one mount: a root whose entries are layers.

Handlers raise only ``FUSEError``: a reader failure (any ``LazyImageError``) is logged with
the layer, file and offset and answered EIO, as is any unexpected exception, so a bug
never ends the mount. Everything a handler does itself is a few array lookups; only
``read`` awaits, on the layer's chunk reader.

Caching, since a layer never changes once mounted:
- entries and attributes of layer files live for a year in the kernel, negative lookups
  inside layers too (python probes many missing paths at import);
- the root changes as layers come and go, so its attributes live 1 s and its misses are
  not cached (``remove_layer`` invalidates the entry it drops);
- reads keep the page cache across opens (``keep_cache``, or the kernel's no_open mode).

A file handle is the file's inode number: ``open`` keeps no state. In no_open mode the
kernel sends no opens at all, and lazyimage's patched pyfuse3 passes the inode to ``read``
(``_pyfuse3_build``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import structlog
import trio

from lazyimage.errors import LazyImageError
from lazyimage.fusefs._inodes import MAX_NODES, ROOT_INODE, LayerSlots, Slot, inode, split
from lazyimage.layer import ROOT, Attr, RemoteLayer
from lazyimage.metrics import FUSE_OPERATION_DURATION

__all__ = ["LayerFilesystem"]

log = structlog.get_logger(__name__)

assert pyfuse3.ROOT_INODE == ROOT_INODE

_FOREVER = 365 * 86400.0
_ROOT_ATTR_TIMEOUT = 1.0
_BLOCK = 4096
_NAME_MAX = 255


def _forget_root_entry(name: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):  # the kernel never looked the name up
        pyfuse3.invalidate_entry(ROOT_INODE, name)


P = ParamSpec("P")
R = TypeVar("R")


def _handler(
    operation: str,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Time a handler, and turn anything but FUSEError into a logged EIO."""
    histogram = FUSE_OPERATION_DURATION.labels(operation)

    def wrap(handler: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(handler)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return await handler(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception:
                log.exception("FUSE handler failed", operation=operation)
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                histogram.observe(time.perf_counter() - start)

        return timed

    return wrap


class LayerFilesystem(pyfuse3.Operations):
    """The mount's root directory, whose entries are the mounted layers."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self) -> None:
        super().__init__()
        self.mountpoint: Path | None = None  # set by FuseSession
        self.no_open = False  # set by FuseSession when reads can be mapped without opens
        self._layers: LayerSlots[RemoteLayer] = LayerSlots()
        self._created_ns = time.time_ns()
        self._blocks = 0
        self._files = 0

    # Layers

    def add_layer(self, name: str, layer: RemoteLayer, *, slot: int | None = None) -> Path:
        """Serve ``layer`` as ``<mountpoint>/<name>``; usable (e.g. as a lowerdir) at once.
        ``slot``: the inode slot it had under an earlier server of this mount."""
        if self.mountpoint is None:
            raise RuntimeError("the filesystem is not mounted")
        encoded = os.fsencode(name)
        if (
            not name
            or name in (".", "..")
            or b"/" in encoded
            or b"\0" in encoded
            or len(encoded) > _NAME_MAX
        ):
            raise ValueError(f"invalid layer name {name!r}")
        if layer.tree.node_count >= MAX_NODES:
            raise ValueError(f"layer {name!r} has too many nodes for one inode slot")
        self._layers.add(name, layer, number=slot)
        self._blocks += -(-layer.tree.total_size // _BLOCK)
        self._files += layer.tree.node_count
        self._root_changed()
        return self.mountpoint / name

    async def remove_layer(self, name: str) -> RemoteLayer:
        """Stop serving a layer; returns once the kernel has dropped its name, so a lookup
        right after fails. Inodes the kernel still holds for it answer ESTALE."""
        slot = self._layers.remove(name)
        self._blocks -= -(-slot.value.tree.total_size // _BLOCK)
        self._files -= slot.value.tree.node_count
        if pyfuse3.trio_token is not None:
            # The notification blocks until related requests finish, which need this
            # thread; so it waits in a worker while the trio thread goes on serving.
            await trio.to_thread.run_sync(_forget_root_entry, os.fsencode(name))
        self._root_changed()
        return slot.value

    def layer_names(self) -> list[str]:
        return [slot.name for slot in self._layers]

    def slot_of(self, name: str) -> int:
        """The inode slot of a served layer (KeyError if it is not served)."""
        slot = self._layers.named(name)
        if slot is None:
            raise KeyError(name)
        return slot.number

    @property
    def next_slot(self) -> int:
        return self._layers.next_number

    def resume_slots(self, next_slot: int) -> None:
        """Number new layers from ``next_slot`` on, as an earlier server of this mount did."""
        self._layers.resume(next_slot)

    def layer(self, name: str) -> RemoteLayer | None:
        slot = self._layers.named(name)
        return None if slot is None else slot.value

    # Helpers

    @staticmethod
    def _root_changed() -> None:
        # The root's nlink counts layers. Dropping cached attributes only (no page cache)
        # cannot wait on a request, so it is safe from the trio thread.
        if pyfuse3.trio_token is not None:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(ROOT_INODE, attr_only=True)

    def _slot(self, ino: int) -> tuple[Slot[RemoteLayer], int]:
        number, node_id = split(ino)
        slot = self._layers.get(number)
        if slot is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return slot, node_id

    def _root_entry(self) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ROOT_INODE
        entry.entry_timeout = entry.attr_timeout = _ROOT_ATTR_TIMEOUT
        entry.st_mode = stat.S_IFDIR | 0o755
        entry.st_nlink = 2 + len(self._layers)
        entry.st_blksize = _BLOCK
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self._created_ns
        return entry

    @staticmethod
    def _entry(ino: int, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ino
        entry.entry_timeout = entry.attr_timeout = _FOREVER
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = _BLOCK
        entry.st_blocks = attr.blocks
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attr.mtime_ns
        return entry

    def _entry_of(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino == ROOT_INODE:
            return self._root_entry()
        slot, node_id = self._slot(ino)
        return self._entry(ino, slot.value.tree.attr(node_id))

    # Operations

    @_handler("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INODE:
            if name in (b".", b".."):
                return self._root_entry()
            slot = self._layers.named(os.fsdecode(name))
            if slot is None:
                raise pyfuse3.FUSEError(errno.ENOENT)  # not cached: layers come and go
            return self._entry(inode(slot.number, ROOT), slot.value.tree.attr(ROOT))
        slot, node_id = self._slot(parent_inode)
        tree = slot.value.tree
        if name == b".":
            return self._entry(parent_inode, tree.attr(node_id))
        if name == b"..":
            if node_id == ROOT:
                return self._root_entry()
            parent = tree.parent(node_id)
            return self._entry(inode(slot.number, parent), tree.attr(parent))
        child = tree.lookup(node_id, name)
        if child is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a cached miss: the layer never changes
            negative.entry_timeout = _FOREVER
            return negative
        return self._entry(inode(slot.number, child), tree.attr(child))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Inode numbers are computed, never allocated: there is nothing to free.
        return None

    @_handler("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry_of(inode)

    @_handler("readlink")
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        slot, node_id = self._slot(inode)
        try:
            return slot.value.tree.readlink(node_id)
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    @_handler("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INODE:
            slot, node_id = self._slot(inode)
            if not slot.value.tree.is_dir(node_id):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode  # listings come from immutable arrays: no per-handle state

    @_handler("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # next_id is 1 for ".", 2 for "..", then 3 + index (layers: 2 + slot number), so
        # it is stable between calls however many entries each call takes.
        if fh == ROOT_INODE:
            await self._readdir_root(start_id, token)
            return
        slot, node_id = self._slot(fh)
        tree = slot.value.tree
        if start_id < 1 and not pyfuse3.readdir_reply(
            token, b".", self._entry(fh, tree.attr(node_id)), 1
        ):
            return
        if start_id < 2:
            if node_id == ROOT:
                up = self._root_entry()
            else:
                parent = tree.parent(node_id)
                up = self._entry(inode(slot.number, parent), tree.attr(parent))
            if not pyfuse3.readdir_reply(token, b"..", up, 2):
                return
        children = tree.children(node_id)
        for index in range(max(start_id - 2, 0), len(children)):
            name, child = children[index]
            entry = self._entry(inode(slot.number, child), tree.attr(child))
            if not pyfuse3.readdir_reply(token, name, entry, index + 3):
                return

    async def _readdir_root(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        root = self._root_entry()
        if start_id < 1 and not pyfuse3.readdir_reply(token, b".", root, 1):
            return
        if start_id < 2 and not pyfuse3.readdir_reply(token, b"..", root, 2):
            return
        for slot in self._layers:
            if slot.number + 2 <= start_id:
                continue
            entry = self._entry(inode(slot.number, ROOT), slot.value.tree.attr(ROOT))
            if not pyfuse3.readdir_reply(token, os.fsencode(slot.name), entry, slot.number + 2):
                return

    @_handler("releasedir")
    async def releasedir(self, fh: int) -> None:
        return None

    @_handler("open")
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.no_open:
            # The kernel takes this as "opens need no reply" for the whole mount.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._slot(inode)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_handler("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        slot, node_id = self._slot(fh)
        try:
            return await slot.value.read(node_id, off, size)
        except LazyImageError as exc:
            log.error(
                "read failed",
                layer=slot.name,
                file=slot.value.tree.path(node_id),
                offset=off,
                size=size,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise pyfuse3.FUSEError(errno.EIO) from None

    @_handler("release")
    async def release(self, fh: int) -> None:
        return None

    @_handler("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = _BLOCK
        data.f_blocks = self._blocks
        data.f_bfree = data.f_bavail = 0
        data.f_files = self._files + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = _NAME_MAX
        return data

    @_handler("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode != ROOT_INODE:
            slot, node_id = self._slot(inode)
            value = slot.value.tree.xattrs(node_id).get(name)
            if value is not None:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_handler("listxattr")
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode == ROOT_INODE:
            return []
        slot, node_id = self._slot(inode)
        return list(slot.value.tree.xattrs(node_id))
