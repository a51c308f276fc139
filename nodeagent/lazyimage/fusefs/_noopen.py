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
import struct
from collections.abc import Collection

import structlog

__all__ = ["install"]

log = structlog.get_logger(__name__)

_INIT_SYMBOL = "PyInit_pyfuse3"
_SESSION = "__pyx_v_7pyfuse3_session"
_OPS = "__pyx_v_7pyfuse3_fuse_ops"
_READ_HANDLER = "__pyx_f_7pyfuse3_fuse_read"
_PTR = ctypes.sizeof(ctypes.c_void_p)
# struct fuse_lowlevel_ops: init, destroy, lookup, forget, getattr, setattr, readlink, mknod,
# mkdir, unlink, rmdir, symlink, rename, link, open, read, ... (public ABI, fuse_lowlevel.h)
_READ_SLOT = 15 * _PTR
_OPS_PREFIX = 16 * _PTR
# struct fuse_file_info: int flags; 32 bits of flags; 32 bits of padding; uint64_t fh
_FH_OFFSET = 16
_MAX_OPS_OFFSET = 256  # op sits near the start of struct fuse_session (40 in libfuse 3.14)
_SHT_SYMTAB = 2

_ReadFn = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)
# pyfuse3's handler runs Python code: call it without releasing the GIL.
_CallRead = ctypes.PYFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)

_keep: list[object] = []  # ctypes objects that C code points at must outlive the session


def _elf_symbols(path: str, wanted: Collection[str]) -> dict[str, int]:
    """Values of the named symbols in an ELF64 little-endian file's .symtab."""
    found: dict[str, int] = {}
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return found
        (shoff,) = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        for _, kind, _, _, offset, size, link, _, _, entsize in sections:
            if kind != _SHT_SYMTAB or entsize != 24 or link >= len(sections):
                continue
            f.seek(sections[link][4])
            strtab = f.read(sections[link][5])
            f.seek(offset)
            symbols = f.read(size)
            for at in range(0, len(symbols) - 23, 24):
                name_at = struct.unpack_from("<I", symbols, at)[0]
                end = strtab.find(b"\0", name_at)
                name = strtab[name_at:end].decode("ascii", "replace")
                if name in wanted:
                    found[name] = struct.unpack_from("<Q", symbols, at + 8)[0]
    return found


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


def install(extension_path: str) -> bool:
    """Route inode numbers to ``Operations.read`` in no_open mode; False if it cannot.

    Call after ``pyfuse3.init`` (the session must exist) and before serving.
    """
    symbols = _elf_symbols(extension_path, {_INIT_SYMBOL, _SESSION, _OPS, _READ_HANDLER})
    if len(symbols) != 4:
        log.warning("pyfuse3 symbols not found; opens will round-trip", path=extension_path)
        return False
    library = ctypes.CDLL(extension_path)
    _keep.append(library)
    init_address = ctypes.cast(getattr(library, _INIT_SYMBOL), ctypes.c_void_p).value
    assert init_address is not None
    base = init_address - symbols[_INIT_SYMBOL]
    ops = base + symbols[_OPS]
    handler = base + symbols[_READ_HANDLER]
    session = ctypes.c_void_p.from_address(base + symbols[_SESSION]).value
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
