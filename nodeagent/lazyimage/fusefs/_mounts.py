"""Finding, aborting and detaching mounts, for the session and for tests.

Everything here reads ``/proc/self/mountinfo`` and never stats a mountpoint: a FUSE mount
whose daemon hangs (or whose /dev/fuse fd a stray child still holds) blocks any access,
and one whose daemon died answers ENOTCONN. Its connection is aborted through fusectl
(``/sys/fs/fuse/connections/N/abort``), then the mount is detached.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = [
    "FUSECTL",
    "MountInfo",
    "abort_connection",
    "detach",
    "force_unmount",
    "mounts_at",
    "mounts_under",
    "read_mounts",
]

log = structlog.get_logger(__name__)

FUSECTL = Path("/sys/fs/fuse/connections")
_MOUNTINFO = Path("/proc/self/mountinfo")
_MNT_DETACH = 2
_ESCAPE = re.compile(r"\\([0-7]{3})")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class MountInfo:
    mountpoint: str
    fstype: str
    major: int
    minor: int

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith(("fuse.", "fuseblk"))

    @property
    def connection(self) -> int:
        """The fusectl directory number: the superblock's kernel dev_t."""
        return (self.major << 20) | self.minor


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mountinfo as \ooo escapes.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts() -> list[MountInfo]:
    """Every mount this process sees, in mount order (later ones stack on earlier ones)."""
    mounts = []
    for line in _MOUNTINFO.read_text("utf-8", "surrogateescape").splitlines():
        fields = line.split()
        sep = fields.index("-")
        major, minor = fields[2].split(":")
        mounts.append(MountInfo(_unescape(fields[4]), fields[sep + 1], int(major), int(minor)))
    return mounts


def mounts_at(path: Path | str) -> list[MountInfo]:
    """The mounts stacked on ``path`` (absolute, symlinks not resolved), lowest first."""
    target = os.path.abspath(path)
    return [m for m in read_mounts() if m.mountpoint == target]


def mounts_under(path: Path | str) -> list[MountInfo]:
    """The mounts on ``path`` or below it, lowest first."""
    target = os.path.abspath(path)
    prefix = target.rstrip("/") + "/"
    return [m for m in read_mounts() if m.mountpoint == target or m.mountpoint.startswith(prefix)]


def _ensure_fusectl() -> None:
    if any(m.fstype == "fusectl" for m in read_mounts()):
        return
    if _libc.mount(b"fusectl", bytes(FUSECTL), b"fusectl", 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise OSError(err, f"mounting fusectl on {FUSECTL}: {os.strerror(err)}")


def abort_connection(mount: MountInfo) -> bool:
    """Abort the FUSE connection behind ``mount``: pending and later requests fail at once."""
    _ensure_fusectl()
    abort = FUSECTL / str(mount.connection) / "abort"
    try:
        abort.write_text("1")
    except FileNotFoundError:
        return False  # the connection is already gone
    log.warning("aborted FUSE connection", mountpoint=mount.mountpoint, connection=mount.connection)
    return True


def detach(path: Path | str) -> None:
    """Lazily unmount the topmost mount on ``path`` (MNT_DETACH never blocks on a dead FUSE)."""
    if _libc.umount2(os.fsencode(os.path.abspath(path)), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unmounting {path}: {os.strerror(err)}")


def force_unmount(path: Path | str) -> int:
    """Detach every mount on or below ``path``, topmost first, aborting FUSE ones first.

    Returns how many mounts were removed. Overlays on top of a FUSE layer go before it.
    """
    removed = 0
    for mount in reversed(mounts_under(path)):
        if mount.is_fuse:
            abort_connection(mount)
        try:
            detach(mount.mountpoint)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            continue  # already gone, e.g. detached with its parent
        removed += 1
    return removed
