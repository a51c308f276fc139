"""Opens without a round trip: the kernel's no_open mode, with reads still mapped to files.

Answering FUSE_OPEN with ENOSYS makes the kernel stop sending opens (and releases) for the
whole mount; a warm open+read then never leaves the kernel. Reads in that mode carry
``fh = 0``, and pyfuse3 passes only ``fh`` to ``Operations.read``, dropping the inode
number the kernel sent. libfuse's low-level read callback does receive the inode, so
``install`` puts a small ctypes trampoline into the session's read slot: it copies the
inode into ``fi->fh`` when ``fh`` is 0, then calls pyfuse3's own handler. ``read`` then
sees the inode as its file handle.

Finding the slot relies on two pyfuse3 internals, each checked before anything is written:
the module's static ``session`` pointer and ``fuse_ops`` table, found by name in the
extension's ELF symbol table; and libfuse's copy of that table inside ``struct
fuse_session``, found by comparing bytes. Any mismatch (a stripped build, another layout)
makes ``install`` return False, and the filesystem answers opens normally instead.
"""

from __future__ import annotations

import ctypes

import structlog

from lazyimage.fusefs._libfuse import pyfuse3_symbols

__all__ = ["install"]

log = structlog.get_logger(__name__)

_PTR = ctypes.sizeof(ctypes.c_void_p)
# struct fuse_lowlevel_ops: init, destroy, lookup, forget, getattr, setattr, readlink, mknod,
# mkdir, unlink, rmdir, symlink, rename, link, open, read, ... (public ABI, fuse_lowlevel.h)
_READ_SLOT = 15 * _PTR
_OPS_PREFIX = 16 * _PTR
# struct fuse_file_info: int flags; 32 bits of flags; 32 bits of padding; uint64_t fh
_FH_OFFSET = 16
_MAX_OPS_OFFSET = 256  # op sits near the start of struct fuse_session (40 in libfuse 3.14)

_ReadFn = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)
# pyfuse3's handler runs Python code: call it without releasing the GIL.
_CallRead = ctypes.PYFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)

_keep: list[object] = []  # ctypes objects that C code points at must outlive the session


def _trampoline(pyfuse3_read: int) -> int:
    call = _CallRead(pyfuse3_read)

    def read(req: int, ino: int, size: int, off: int, fi: int) -> None:
        fh = ctypes.c_uint64.from_address(fi + _FH_OFFSET)
        if fh.value == 0:
            fh.value = ino
        call(req, ino, size, off, fi)

    callback = _ReadFn(read)
    _keep.extend((call, callback))
    address = ctypes.cast(callback, ctypes.c_void_p).value
    assert address is not None
    return address


def install(extension: str | None = None) -> bool:
    """Route inode numbers to ``Operations.read`` in no_open mode; False if it cannot.
    ``extension``: the pyfuse3 extension file, if not the one loaded.

    Call after ``pyfuse3.init`` (the session must exist) and before serving.
    """
    symbols = pyfuse3_symbols(extension)
    if symbols is None:
        log.warning("pyfuse3 symbols not found; opens will round-trip")
        return False
    session, ops, handler = symbols.session, symbols.ops, symbols.read_handler
    if not session or ctypes.c_void_p.from_address(ops + _READ_SLOT).value != handler:
        log.warning("pyfuse3 session layout not recognised; opens will round-trip")
        return False
    prefix = ctypes.string_at(ops, _OPS_PREFIX)
    for offset in range(0, _MAX_OPS_OFFSET, _PTR):
        if ctypes.string_at(session + offset, _OPS_PREFIX) == prefix:
            slot = ctypes.c_void_p.from_address(session + offset + _READ_SLOT)
            slot.value = _trampoline(handler)
            return True
    log.warning("libfuse session layout not recognised; opens will round-trip")
    return False
