"""The chunk files on disk: ``ROOT/sha256/ab/<64 hex>``, written crash-safely.

A chunk is written to ``.tmp-<random>`` in its final directory, fsynced, then renamed over its
final name, so a final name never points at a partial file. The directory is not fsynced: a
rename lost in a crash only loses a cache entry (a future miss), never exposes a torn file.
Temp files are leftovers of a crash and are deleted by ``scan``.

Nothing here locks or keeps state beyond paths; ``ChunkCache`` owns the policy.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

__all__ = ["ChunkFiles", "ScanResult", "ScannedChunk", "Stamp", "Writer", "stamp_of"]

TEMP_PREFIX = ".tmp-"
_KEY = re.compile(r"[0-9a-f]{64}")
_FANOUT = [f"{i:02x}" for i in range(256)]


class Stamp(NamedTuple):
    """What changes whenever a file is written, truncated or replaced: the inode, its size,
    and its mtime and ctime (ctime cannot be set back from user space)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def stamp_of(st: os.stat_result) -> Stamp:
    return Stamp(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ScannedChunk(NamedTuple):
    key: bytes
    size: int
    mtime_ns: int


@dataclass(slots=True)
class ScanResult:
    chunks: list[ScannedChunk] = field(default_factory=list)  # oldest first
    temps_removed: int = 0
    strays_removed: int = 0


class Writer:
    """One chunk being written: ``write`` then ``commit``, or ``abort``.

    Used as a context manager, leaving the block without ``commit`` aborts. ``abort`` never
    raises, so it is safe in error paths.
    """

    def __init__(self, temp: str, final: str, fd: int) -> None:
        self._temp = temp
        self._final = final
        self._fd: int | None = fd
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise ValueError("writer is closed")
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> Stamp:
        """Make the chunk durable, then visible under its final name. Returns the file's
        stamp as renamed (a rename changes the ctime), to tell later if it was changed."""
        if self._fd is None:
            raise ValueError("writer is closed")
        try:
            os.fsync(self._fd)
            os.replace(self._temp, self._final)
        except BaseException:
            self.abort()
            raise
        try:
            stamp = stamp_of(os.fstat(self._fd))
        except BaseException:
            self._temp = self._final  # renamed already: abort removes it under that name
            self.abort()
            raise
        fd, self._fd = self._fd, None
        self._done = True
        with contextlib.suppress(OSError):
            os.close(fd)
        return stamp

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):  # gone already, or the next scan removes it
            os.unlink(self._temp)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ChunkFiles:
    """Paths and file operations for one cache root. Keys are the digests' 32 bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._base = os.path.join(os.fspath(root), "sha256")

    def path(self, key: bytes) -> str:
        name = key.hex()
        return os.path.join(self._base, name[:2], name)

    def prepare(self) -> None:
        """Create the fan-out directories, so a write never has to."""
        for name in _FANOUT:
            os.makedirs(os.path.join(self._base, name), exist_ok=True)

    def begin(self, key: bytes) -> Writer:
        final = self.path(key)
        directory = os.path.dirname(final)
        temp = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)  # removed behind our back
            fd = os.open(temp, flags, 0o644)
        return Writer(temp, final, fd)

    def open(self, key: bytes) -> int:
        """A read-only fd on the chunk file. Raises OSError (ENOENT if it is gone)."""
        return os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)

    def remove(self, key: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))

    def scan(self) -> ScanResult:
        """Index what is on disk with one stat per file, oldest mtime first.

        Temp files are deleted. So are files that cannot be a chunk of this directory
        (wrong name, wrong fan-out directory, symlinks): nothing else belongs here, and
        they would take space the cap does not see. Subdirectories are left alone.
        """
        result = ScanResult()
        try:
            tops = list(os.scandir(self._base))
        except FileNotFoundError:
            return result
        for top in tops:
            if top.name not in _FANOUT_SET or not top.is_dir(follow_symlinks=False):
                continue
            with os.scandir(top.path) as entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False):
                        continue
                    if name.startswith(TEMP_PREFIX):
                        result.temps_removed += _unlink_quietly(entry.path)
                        continue
                    if not _is_key(name) or name[:2] != top.name:
                        result.strays_removed += _unlink_quietly(entry.path)
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        result.strays_removed += _unlink_quietly(entry.path)
                        continue
                    key = bytes.fromhex(name)
                    result.chunks.append(ScannedChunk(key, st.st_size, st.st_mtime_ns))
        result.chunks.sort(key=itemgetter(2))  # by mtime
        return result


_FANOUT_SET = frozenset(_FANOUT)


def _is_key(name: str) -> bool:
    return _KEY.fullmatch(name) is not None


def _unlink_quietly(path: str) -> bool:
    """True if removed. A failure (say a read-only fs) leaves the file unindexed, never served."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
