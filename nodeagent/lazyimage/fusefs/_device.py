"""The kernel side of the mount: ``/dev/fuse``, mount(2), the INIT request, and the
resend notification.

The session mounts by itself rather than through libfuse, so that the same steps serve a
fresh mount and one taken over from an earlier agent: open ``/dev/fuse``, mount with
``fd=N``, read the kernel's INIT request and keep its bytes. pyfuse3 is then given the
descriptor as ``/dev/fd/N`` (libfuse uses it as is and mounts nothing) and is handed the
saved INIT to answer. A later agent that takes the descriptor over replays the same INIT
(the kernel ignores the second answer, whose request it no longer has) and asks the kernel
to send again the requests the earlier agent had read but not answered
(``FUSE_NOTIFY_RESEND``, Linux 6.9).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FuseMountError", "mount_fuse", "read_init", "resend_pending"]

_DEVICE = "/dev/fuse"
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4
# Kernel mount options, as libfuse passes them; everything else is libfuse's own.
_KERNEL_OPTIONS = frozenset({"allow_other", "default_permissions"})
# FUSE_MIN_READ_BUFFER is 8 KiB; INIT is far smaller, but a read must offer at least that.
_READ_SIZE = 1 << 17
_FUSE_INIT = 26
_FUSE_NOTIFY_RESEND = 7
_OUT_HEADER = struct.Struct("<IiQ")  # len, error (the notify code), unique (0: a notification)
_IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding

_libc = ctypes.CDLL(None, use_errno=True)


class FuseMountError(OSError):
    """Mounting, or reading the kernel's first request, failed."""


def mount_fuse(mountpoint: Path, options: Iterable[str]) -> int:
    """Open ``/dev/fuse`` and mount it on ``mountpoint``; returns the descriptor.

    ``options`` are libfuse-style: ``fsname=`` and ``subtype=`` name the mount (``SOURCE``
    and ``fuse.SUBTYPE``), ``ro`` makes it read-only, and the kernel's own options pass on.
    """
    fsname, subtype, flags = "fuse", "", _MS_NOSUID | _MS_NODEV
    kernel: list[str] = []
    for option in options:
        key, _, value = option.partition("=")
        if key == "fsname":
            fsname = value
        elif key == "subtype":
            subtype = value
        elif key == "ro":
            flags |= _MS_RDONLY
        elif key in _KERNEL_OPTIONS:
            kernel.append(key)
        else:
            raise ValueError(f"unsupported mount option {option!r}")
    fd = os.open(_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    data = ",".join([f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}",
                     f"group_id={os.getgid()}", *kernel])  # fmt: skip
    fstype = f"fuse.{subtype}" if subtype else "fuse"
    if _libc.mount(fsname.encode(), os.fsencode(mountpoint), fstype.encode(), flags,
                   data.encode()) != 0:  # fmt: skip
        err = ctypes.get_errno()
        os.close(fd)
        raise FuseMountError(err, f"mounting FUSE on {mountpoint}: {os.strerror(err)}")
    return fd


def read_init(fd: int) -> bytes:
    """The kernel's INIT request on a freshly mounted descriptor (it is always the first)."""
    try:
        request = os.read(fd, _READ_SIZE)
    except OSError as exc:
        raise FuseMountError(exc.errno or errno.EIO, f"reading FUSE INIT: {exc}") from exc
    if len(request) < _IN_HEADER.size:
        raise FuseMountError(errno.EPROTO, f"short FUSE request ({len(request)} bytes)")
    length, opcode = _IN_HEADER.unpack_from(request)[:2]
    if opcode != _FUSE_INIT or length != len(request):
        raise FuseMountError(errno.EPROTO, f"the first FUSE request is opcode {opcode}, not INIT")
    return request


def resend_pending(fd: int) -> bool:
    """Ask the kernel to queue again every request that was read but never answered (by
    an agent that is gone). False on a kernel without ``FUSE_NOTIFY_RESEND``."""
    try:
        os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size, _FUSE_NOTIFY_RESEND, 0))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True
