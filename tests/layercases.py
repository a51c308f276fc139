"""Synthetic tar layers covering the corners of the format, shared by unit and conformance tests.

Each case is a list of ``Item``s; ``write_tar`` turns it into a plain tar with Python's tarfile
(PAX format), and ``expected_files`` says what a reader must find in it.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
CHUNK = 4 * MiB


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # reg dir symlink hardlink char block fifo
    data: bytes = b""
    size: int = -1  # for zero-filled files written without holding the bytes
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.size if self.size >= 0 else len(self.data)


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


_TYPES = {
    "reg": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def write_tar(items: list[Item], path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for item in items:
            info = tarfile.TarInfo(item.name)
            info.type = _TYPES[item.kind]
            info.mode = item.mode
            info.uid, info.gid = item.uid, item.gid
            info.uname = "root" if item.uid == 0 else f"user{item.uid}"
            info.gname = "root" if item.gid == 0 else f"group{item.gid}"
            info.mtime = item.mtime
            info.linkname = item.link
            info.devmajor, info.devminor = item.dev
            info.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                for k, v in item.xattrs.items()
            }
            if item.kind == "reg":
                info.size = item.length
                source = io.BytesIO(item.data) if item.size < 0 else _Zeros(item.size)
                tar.addfile(info, source)  # type: ignore[arg-type]
            else:
                tar.addfile(info)
    return path


def write_sparse_zero_tar(path: Path, name: str, size: int) -> Path:
    """A tar holding one zero-filled file of ``size`` bytes, sparse on disk (holes, not bytes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 1_700_000_000
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    with open(path, "wb") as out:
        out.write(header)
        padded = size + (-size % 512)
        out.truncate(len(header) + padded + 1024)  # the data and the end-of-archive are holes
    return path


def content_digest(item: Item) -> str:
    if item.size >= 0:
        h = hashlib.sha256()
        block = bytes(MiB)
        left = item.size
        while left:
            n = min(left, MiB)
            h.update(block[:n])
            left -= n
        return "sha256:" + h.hexdigest()
    return "sha256:" + hashlib.sha256(item.data).hexdigest()


def _everything() -> list[Item]:
    return [
        Item("etc", "dir", mode=0o755),
        Item("etc/hostname", "reg", b"lazyimage\n"),
        Item("etc/empty.conf", "reg", b""),
        Item("etc/motd", "symlink", link="hostname", mode=0o777),
        Item("etc/hostname.bak", "hardlink", link="etc/hostname"),
        Item("bin", "dir", mode=0o755),
        Item("bin/tool", "reg", _random(3000, 1), mode=0o4755, uid=0, gid=0),
        Item("data", "dir", mode=0o700, uid=1000, gid=1000),
        Item("data/exact-4MiB", "reg", _random(CHUNK, 2), uid=1000, gid=1000),
        Item("data/4MiB-plus-1", "reg", _random(CHUNK + 1, 3), uid=1000, gid=1000),
        Item("data/zeros", "reg", size=9 * MiB + 123),
        Item("data/" + "long-name-" * 12 + ".txt", "reg", b"long"),
        Item("data/" + "d" * 60 + "/" + "e" * 60 + "/" + "f" * 60, "reg", b"deep"),
        Item("données/naïve-文件.txt", "reg", "non-ASCII ✓".encode()),
        Item("data/<html>&amp.txt", "reg", b"escaped"),
        Item(
            "data/with-xattrs",
            "reg",
            b"x",
            xattrs={"user.comment": b"hello", "security.capability": b"\x01\x00\x00\x02\xff"},
        ),
        Item("var", "dir", mode=0o755),
        Item("var/.wh.removed", "reg", b""),
        Item("var/cache", "dir", mode=0o755),
        Item("var/cache/.wh..wh..opq", "reg", b""),
        Item("dev", "dir", mode=0o755),
        Item("dev/null", "char", mode=0o666, dev=(1, 3)),
        Item("dev/loop0", "block", mode=0o660, dev=(7, 0)),
        Item("dev/pipe", "fifo", mode=0o600),
    ]


def _no_regular_files() -> list[Item]:
    return [
        Item("a", "dir", mode=0o755),
        Item("a/b", "dir", mode=0o755),
        Item("a/link", "symlink", link="b"),
        Item("a/dev", "char", dev=(5, 1)),
        Item("a/fifo", "fifo"),
    ]


CASES: dict[str, Callable[[], list[Item]]] = {
    "hardlinks": lambda: [
        Item("x", "dir", mode=0o755),
        Item("x/original", "reg", b"shared content"),
        Item("x/second", "hardlink", link="x/original"),
        Item("third", "hardlink", link="x/original"),
    ],
    "symlinks": lambda: [
        Item("lib", "dir", mode=0o755),
        Item("lib/libc.so.6", "reg", b"ELF"),
        Item("lib/libc.so", "symlink", link="libc.so.6"),
        Item("lib/dangling", "symlink", link="/nowhere/at/all"),
        Item("lib/long", "symlink", link="t" * 150),
    ],
    "empty-files": lambda: [Item("a", "reg", b""), Item("b", "reg", b""), Item("c", "reg", b"c")],
    "chunk-boundaries": lambda: [
        Item("exact", "reg", _random(CHUNK, 4)),
        Item("plus-one", "reg", _random(CHUNK + 1, 5)),
        Item("minus-one", "reg", _random(CHUNK - 1, 6)),
        Item("three-chunks", "reg", _random(2 * CHUNK + 7, 7)),
    ],
    "zeros": lambda: [Item("zero", "reg", size=12 * MiB), Item("small-zero", "reg", bytes(10))],
    "long-names": lambda: [
        Item("n" * 101, "reg", b"101"),
        Item("dir-" + "x" * 120, "dir", mode=0o755),
        Item("dir-" + "x" * 120 + "/" + "y" * 200, "reg", b"nested"),
    ],
    "non-ascii": lambda: [
        Item("日本語", "dir", mode=0o755),
        Item("日本語/ファイル.txt", "reg", "こんにちは".encode()),
        Item("émoji-🙂", "reg", b"smile"),
    ],
    "xattrs": lambda: [
        Item("f", "reg", b"f", xattrs={"user.a": b"1", "user.b": b"two"}),
        Item("d", "dir", mode=0o755, xattrs={"trusted.overlay.opaque": b"y"}),
        Item("cap", "reg", b"c", xattrs={"security.capability": bytes(range(20))}),
    ],
    "whiteouts": lambda: [
        Item("etc", "dir", mode=0o755),
        Item("etc/.wh.passwd", "reg", b""),
        Item("opt", "dir", mode=0o755),
        Item("opt/.wh..wh..opq", "reg", b""),
        Item("opt/new", "reg", b"new"),
    ],
    "devices": lambda: [
        Item("dev", "dir", mode=0o755),
        Item("dev/null", "char", mode=0o666, dev=(1, 3)),
        Item("dev/zero", "char", mode=0o666, dev=(1, 5)),
        Item("dev/sda", "block", mode=0o660, dev=(8, 0)),
        Item("dev/fifo", "fifo", mode=0o644),
    ],
    "no-regular-files": _no_regular_files,
    "everything": _everything,
}
