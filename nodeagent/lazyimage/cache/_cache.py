"""ChunkCache: verified, uncompressed chunk bytes on disk, keyed by chunk digest.

Safe from any thread. One lock guards the in-memory state and is never held across file
I/O: opens, reads, writes, hashing and unlinks all happen outside it.

Trust: chunks written by ``put`` were verified by the caller. Files found on disk at start
may be torn or edited, so each is hashed on its first read and deleted on a mismatch (the
read is then a miss and the caller fetches the chunk again). While the cache runs, each read
compares the file's stamp (inode, size, mtime, ctime) with the one taken when it was written
or hashed, one ``fstat`` on the open fd: a file written, truncated or replaced since is
hashed again before a byte of it is served. Damage that changes no stamp (the disk's own bit
rot) is the filesystem's to catch.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import resource
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from lazyimage import metrics
from lazyimage.cache._digest import chunk_key, key_hex
from lazyimage.cache._evict import Entry, LruIndex, Reservation
from lazyimage.cache._fds import FdTable, Handle
from lazyimage.cache._report import WriteErrorReporter
from lazyimage.cache._store import ChunkFiles, Stamp, stamp_of

__all__ = ["DEFAULT_OPEN_FILES", "CacheStats", "ChunkCache"]

log = structlog.get_logger(__name__)

# A container's start reads a few hundred small files, each its own chunk, and the next
# start of the same image reads them again: with fewer open fds than that, the LRU cycles
# and every read opens its chunk file in a worker thread (about 0.3 ms, against a few µs
# for a read of an open, page-cached one on the event loop). Each fd pins one inode.
DEFAULT_OPEN_FILES = 4096
_HASH_BLOCK = 1 << 20
_RESIDENT_BUFFER_MAX = 4 << 20

Data = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class CacheStats:
    bytes: int  # chunk files on disk plus writes in flight; never above capacity
    chunks: int
    capacity: int
    evictions: int


class ChunkCache:
    """An on-disk chunk cache under ``root``, holding at most ``capacity`` bytes.

    Opening it indexes the files already there (one stat each, no hashing), deletes temp
    files left by a crash, and evicts down to ``capacity``. One process at a time may use a
    root: a second ``ChunkCache`` on it raises RuntimeError.
    """

    def __init__(self, root: Path, capacity: int, *, open_files: int | None = None) -> None:
        """``open_files``: chunk fds kept open, by default DEFAULT_OPEN_FILES or a quarter
        of the process's fd limit, whichever is less."""
        self._files = ChunkFiles(root)
        self._index = LruIndex(capacity)
        self._fds = FdTable(open_files or _open_files_within_limit())
        self._lock = threading.Lock()
        self._writing: dict[bytes, threading.Event] = {}
        self._reporter = WriteErrorReporter()
        self._closed = False
        self._nowait = hasattr(os, "RWF_NOWAIT")  # read_resident works here
        self._buffers = threading.local()  # read_resident's
        root.mkdir(parents=True, exist_ok=True)
        self._root_lock = _lock_root(root)
        try:
            self._load()
        except BaseException:
            os.close(self._root_lock)
            raise

    # -- public API ------------------------------------------------------------------

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of the chunk (short at its end); None on a miss."""
        key = chunk_key(digest)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range: offset={offset} length={length}")
        with self._lock:
            entry = None if self._closed else self._index.touch(key)
        if entry is None:
            return None
        for _ in range(2):  # once more if the file changed since it was checked
            if not entry.verified and not self._verify(key, entry):
                return None
            handle = self._borrow(key, entry)
            if handle is None:
                return None
            end = entry.size if length is None else min(entry.size, offset + length)
            want = max(0, end - offset)
            try:
                data = _pread(handle.fd, want, offset)
                # After the read: a change made before it shows in the stamp.
                stamp = stamp_of(os.fstat(handle.fd))
            except OSError as exc:
                errno_name = errno.errorcode.get(exc.errno or 0)
                self._discard(key, entry, "read_failed", errno=errno_name)
                return None
            finally:
                self._release(handle)
            if stamp != entry.stamp:
                # Written, truncated or replaced since it was checked: hash it again
                # before serving a byte of it.
                self._distrust(key, entry)
                continue
            if len(data) != want:
                self._discard(key, entry, "truncated", size=entry.size)
                return None
            return data
        return None

    def read_resident(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> bytes | None:
        """``read``, but only if it needs no disk I/O: the chunk is checked, its fd is open
        and the bytes are in the page cache (``RWF_NOWAIT``). Otherwise None, with no side
        effect: then ``read`` it in a worker thread. Cheap enough for an event loop (a 1 MiB
        copy from memory, about 0.2 ms), which it must never stall on a disk."""
        if not self._nowait:
            return None
        key = chunk_key(digest)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range: offset={offset} length={length}")
        with self._lock:
            entry = None if self._closed else self._index.touch(key)
            if entry is None or not entry.verified:
                return None
            handle = self._fds.borrow(key)  # opening a file could wait on the disk: no
        if handle is None:
            return None
        end = entry.size if length is None else min(entry.size, offset + length)
        want = max(0, end - offset)
        buffer = self._buffer(want)
        if buffer is None:
            self._release(handle)
            return None
        try:
            got = os.preadv(handle.fd, [buffer], offset, os.RWF_NOWAIT)
            stamp = stamp_of(os.fstat(handle.fd))
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # the filesystem cannot: always use ``read``
            return None  # EAGAIN (not in memory), or an error ``read`` will report
        finally:
            self._release(handle)
        if stamp != entry.stamp:
            return None  # changed on disk: ``read`` checks it again
        return bytes(buffer) if got == want else None

    def _buffer(self, size: int) -> memoryview | None:
        """A reusable buffer of ``size`` bytes for this thread, or None if it is too large.
        A fresh bytearray of a MiB is a fresh zeroed mapping (calloc): faulting its pages
        in costs several times the read itself."""
        if size > _RESIDENT_BUFFER_MAX:
            return None
        buffer: bytearray | None = getattr(self._buffers, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._buffers.buffer = bytearray(max(size, _HASH_BLOCK))
        return memoryview(buffer)[:size]

    def contains(self, digest: str) -> bool:
        """True if the chunk is stored. A stored file that fails its first check reads as a miss.

        A chunk asked about counts as used: an image whose fill finds a chunk that another
        image brought keeps it from eviction as long as its own chunks."""
        key = chunk_key(digest)
        with self._lock:
            return not self._closed and self._index.touch(key) is not None

    def put(self, digest: str, data: Data) -> bool:
        """Store a chunk the caller has verified. False if it was not stored; never raises
        for I/O errors (those are logged and counted) and never leaves a partial file."""
        key = chunk_key(digest)
        size = memoryview(data).nbytes
        claim = self._claim(key, size)
        if isinstance(claim, bool):
            return claim
        if isinstance(claim, threading.Event):  # another thread is writing this chunk
            claim.wait()
            with self._lock:
                return key in self._index
        reservation, done = claim
        if reservation.victims:
            metrics.CACHE_EVICTIONS.inc(len(reservation.victims))
        self._unlink(reservation.victims, reservation)  # before writing: the cap holds on disk
        stamp: Stamp | None = None
        try:
            stamp = self._write(key, data, size)
        finally:
            with self._lock:
                del self._writing[key]
                if stamp is not None:
                    self._index.commit(key, reservation, stamp)
                else:
                    self._index.unreserve(reservation)
                self._publish()
            done.set()
        return stamp is not None

    @contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these chunks from eviction while the block runs. Pins nest and may name
        chunks not stored yet (pin, fetch, put, read)."""
        keys = [chunk_key(d) for d in digests]
        with self._lock:
            self._index.pin(keys)
        try:
            yield
        finally:
            with self._lock:
                self._index.unpin(keys)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                bytes=self._index.used,
                chunks=len(self._index),
                capacity=self._index.capacity,
                evictions=self._index.evictions,
            )

    def close(self) -> None:
        """Close cached fds and release the root. Later reads miss and puts return False."""
        to_close: list[int] = []
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fds.drop_all(to_close)  # fds still borrowed close on release
        _close_all(to_close)
        os.close(self._root_lock)

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- start -----------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        self._files.prepare()
        scan = self._files.scan()
        victims = self._index.rebuild((chunk.key, chunk.size) for chunk in scan.chunks)
        if victims:
            metrics.CACHE_EVICTIONS.inc(len(victims))
            self._unlink(victims)
        with self._lock:
            self._publish()
        log.info(
            "cache.loaded",
            root=str(self._files.root),
            chunks=len(self._index),
            bytes=self._index.used,
            capacity=self._index.capacity,
            evicted=len(victims),
            temps_removed=scan.temps_removed,
            strays_removed=scan.strays_removed,
            seconds=round(time.perf_counter() - started, 3),
        )

    # -- helpers (each takes the lock itself; none is called with it held) -------------

    def _claim(
        self, key: bytes, size: int
    ) -> bool | threading.Event | tuple[Reservation, threading.Event]:
        """Decide a put: a final answer, a write to wait for, or room reserved for ours."""
        to_close: list[int] = []
        with self._lock:
            if self._closed:
                return False
            if self._index.touch(key) is not None:
                return True
            pending = self._writing.get(key)
            if pending is not None:
                return pending
            if self._index.is_doomed(key):
                return False  # an unlink of its old file is in flight; rare, skip it
            reservation = self._index.make_room(size)
            if reservation is None:
                return False  # too big, or everything else is pinned
            for victim in reservation.victims:
                self._fds.drop(victim, to_close)
            done = self._writing[key] = threading.Event()
            self._publish()
        _close_all(to_close)
        return reservation, done

    def _verify(self, key: bytes, entry: Entry) -> bool:
        """Hash a file found at start, once, however many readers ask at the same time."""
        with self._lock:
            if entry.verified:
                return True
            if self._index.get(key) is not entry:
                return False
            event = entry.verifying
            if event is None:
                owner = True
                event = entry.verifying = threading.Event()
            else:
                owner = False
        if not owner:
            event.wait()
            with self._lock:
                return entry.verified and self._index.get(key) is entry
        ok = False
        problem: tuple[str, dict[str, object]] | None = None
        stamp: Stamp | None = None
        try:
            ok, problem, stamp = self._check_file(key, entry)
        finally:
            with self._lock:
                entry.verifying = None
                entry.verified = ok
                entry.stamp = stamp
            if problem is not None:
                reason, fields = problem
                self._discard(key, entry, reason, **fields)  # before waking the waiters
            event.set()
        return ok

    def _check_file(
        self, key: bytes, entry: Entry
    ) -> tuple[bool, tuple[str, dict[str, object]] | None, Stamp | None]:
        """Hash the file: whether it holds the chunk, why not, and its stamp if it does."""
        handle = self._borrow(key, entry)
        if handle is None:
            return False, None, None  # evicted, gone, or out of fds: a miss, nothing to delete
        digest = hashlib.sha256()
        buffer = bytearray(_HASH_BLOCK)
        view = memoryview(buffer)
        position = 0
        try:
            before = stamp_of(os.fstat(handle.fd))
            while n := os.preadv(handle.fd, [buffer], position):
                digest.update(view[:n])
                position += n
            after = stamp_of(os.fstat(handle.fd))
        except OSError as exc:
            return False, ("read_failed", {"errno": errno.errorcode.get(exc.errno or 0)}), None
        finally:
            view.release()
            self._release(handle)
        if position != entry.size:
            return False, ("size_changed", {"size": entry.size, "found": position}), None
        if digest.digest() != key:
            found = f"sha256:{digest.hexdigest()}"
            return False, ("digest_mismatch", {"found": found}), None
        if before != after:
            return False, ("changed_while_checked", {}), None
        return True, None, after

    def _distrust(self, key: bytes, entry: Entry) -> None:
        """The entry's file changed since it was checked: the next read hashes it again."""
        with self._lock:
            if self._index.get(key) is entry and entry.verifying is None:
                entry.verified = False

    def _borrow(self, key: bytes, entry: Entry) -> Handle | None:
        """A borrowed fd on ``entry``'s file, or None if it is no longer indexed or gone."""
        with self._lock:
            if self._closed or self._index.get(key) is not entry:
                return None
            handle = self._fds.borrow(key)
        if handle is not None:
            return handle
        try:
            fd = self._files.open(key)
        except FileNotFoundError:
            self._discard(key, entry, "missing")
            return None
        except OSError as exc:
            log.warning(
                "cache.open_failed",
                digest=f"sha256:{key_hex(key)}",
                errno=errno.errorcode.get(exc.errno or 0),
            )
            return None
        to_close: list[int] = []
        with self._lock:
            if not self._closed and self._index.get(key) is entry:
                handle = self._fds.adopt(key, fd, to_close)
            else:
                # Evicted while we opened it: serve this read, then close; keep no fd
                # on a file that no longer counts against the cap.
                handle = Handle(fd)
                handle.live = False
        _close_all(to_close)
        return handle

    def _release(self, handle: Handle) -> None:
        to_close: list[int] = []
        with self._lock:
            self._fds.release(handle, to_close)
        _close_all(to_close)

    def _discard(self, key: bytes, entry: Entry, reason: str, **fields: object) -> None:
        """Delete a chunk that must not be served (failed check, vanished, unreadable)."""
        to_close: list[int] = []
        with self._lock:
            if self._index.get(key) is not entry:
                return
            self._index.remove(key)
            self._fds.drop(key, to_close)
            self._publish()
        _close_all(to_close)
        metrics.CACHE_DISCARDED.labels(reason).inc()
        log.warning(
            "cache.chunk_discarded", digest=f"sha256:{key_hex(key)}", reason=reason, **fields
        )
        self._unlink([key])

    def _unlink(self, keys: list[bytes], reservation: Reservation | None = None) -> None:
        for key in keys:
            try:
                self._files.remove(key)
            except OSError as exc:
                log.error(
                    "cache.unlink_failed",
                    digest=f"sha256:{key_hex(key)}",
                    errno=errno.errorcode.get(exc.errno or 0),
                )
        with self._lock:
            self._index.unlinked(keys, reservation)
            self._publish()

    def _write(self, key: bytes, data: Data, size: int) -> Stamp | None:
        """Write a chunk file: its stamp, or None if it could not be written."""
        try:
            with self._files.begin(key) as writer:
                writer.write(data)
                return writer.commit()
        except OSError as exc:
            self._reporter.report(exc, key=key_hex(key), size=size, root=str(self._files.root))
            return None

    def _publish(self) -> None:
        metrics.CACHE_BYTES.set(self._index.used)
        metrics.CACHE_CHUNKS.set(len(self._index))


def _open_files_within_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_OPEN_FILES
    return max(16, min(DEFAULT_OPEN_FILES, soft // 4))


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes; shorter only at end of file."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


def _lock_root(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise RuntimeError(f"chunk cache {root} is in use by another ChunkCache") from exc
    return fd
