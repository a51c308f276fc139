"""What lazyimage needs of pyfuse3's libfuse session that pyfuse3 does not expose.

pyfuse3 keeps its ``struct fuse_session *`` in a module-level C variable. It is found by
name in the extension's ELF symbol table (checked, never guessed): ``_noopen`` patches a
slot of the session's ops table through it, and ``process_request`` hands the session a
request that did not come from the kernel (the saved INIT, when a new agent takes over a
mount whose INIT an earlier one answered).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Collection
from dataclasses import dataclass

import pyfuse3

__all__ = ["Pyfuse3Symbols", "elf_symbols", "process_request", "pyfuse3_symbols"]

_INIT_SYMBOL = "PyInit_pyfuse3"
_SESSION = "__pyx_v_7pyfuse3_session"
_OPS = "__pyx_v_7pyfuse3_fuse_ops"
_READ_HANDLER = "__pyx_f_7pyfuse3_fuse_read"
_SHT_SYMTAB = 2

_keep: list[object] = []  # libraries whose code C pointers refer to


def elf_symbols(path: str, wanted: Collection[str]) -> dict[str, int]:
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


@dataclass(frozen=True)
class Pyfuse3Symbols:
    """Addresses in the loaded pyfuse3 extension."""

    session: int  # the struct fuse_session * (0 before pyfuse3.init)
    ops: int  # pyfuse3's struct fuse_lowlevel_ops
    read_handler: int  # pyfuse3's C read callback


def pyfuse3_symbols(extension: str | None = None) -> Pyfuse3Symbols | None:
    """The loaded pyfuse3's session, ops table and read handler; None if its build (or the
    given ``extension`` file) does not carry the symbols (stripped, or another layout)."""
    extension = extension or pyfuse3.__file__
    if extension is None:
        return None
    try:
        symbols = elf_symbols(extension, {_INIT_SYMBOL, _SESSION, _OPS, _READ_HANDLER})
    except (OSError, struct.error):
        return None
    if len(symbols) != 4:
        return None
    library = ctypes.CDLL(extension)
    _keep.append(library)
    init_address = ctypes.cast(getattr(library, _INIT_SYMBOL), ctypes.c_void_p).value
    assert init_address is not None
    base = init_address - symbols[_INIT_SYMBOL]
    session = ctypes.c_void_p.from_address(base + symbols[_SESSION]).value or 0
    return Pyfuse3Symbols(session, base + symbols[_OPS], base + symbols[_READ_HANDLER])


class _FuseBuf(ctypes.Structure):
    # struct fuse_buf (fuse_common.h, libfuse 3.x): size, flags, mem, fd, pos
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),
    ]


def process_request(request: bytes) -> bool:
    """Have pyfuse3's session process ``request`` (one raw FUSE request) as if it had been
    read from the device; its answer goes to the device like any other. False if the
    session cannot be found."""
    symbols = pyfuse3_symbols()
    if symbols is None or not symbols.session:
        return False
    # PyDLL: the call keeps the GIL, since the session calls pyfuse3's Python handlers.
    libfuse = ctypes.PyDLL("libfuse3.so.3")
    _keep.append(libfuse)
    process = libfuse.fuse_session_process_buf
    process.argtypes = [ctypes.c_void_p, ctypes.POINTER(_FuseBuf)]
    process.restype = None
    memory = ctypes.create_string_buffer(request, len(request))
    buf = _FuseBuf(len(request), 0, ctypes.cast(memory, ctypes.c_void_p), -1, 0)
    process(symbols.session, ctypes.byref(buf))
    return True
