"""Layer TOCs on disk, keyed by layer digest, so a layer seen before mounts without a request.

A layer opened once (mounted, prewarmed, or mounted before a restart) keeps its blob's end
here: the TOC's gzip member and the footer, and the offset where they start in the blob.
From that alone the layer can be opened again: the footer gives the TOC's place, and the
blob's size is that offset plus the tail's length. Nothing is trusted on the way back in:
the reader parses the tail as if fetched and checks the TOC against the digest the layer
is opened with, so a stale or damaged file is only a miss.

Layout: ``ROOT/<64 hex of the layer digest>``: 8 bytes of big-endian offset, then the tail.
Writes are crash-safe (temp file, fsync, rename). At most ``keep`` TOCs are kept; the least
recently used go first. Thread-safe; every method does file I/O, so call them from worker
threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

from lazyimage.cache._store import TEMP_PREFIX, Writer

__all__ = ["StoredTOC", "TOCStore"]

log = structlog.get_logger(__name__)

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_OFFSET_BYTES = 8


@dataclass(frozen=True)
class StoredTOC:
    toc_offset: int  # where ``tail`` starts in the blob
    tail: bytes  # the TOC member and the footer: the blob's last bytes

    @property
    def blob_size(self) -> int:
        return self.toc_offset + len(self.tail)


class TOCStore:
    def __init__(self, root: Path, *, keep: int = 512) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.root = root
        self.keep = keep
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TEMP_PREFIX}*"):  # a crash's leftovers
            with contextlib.suppress(OSError):
                stale.unlink()

    def _path(self, digest: str) -> Path:
        match = _DIGEST.fullmatch(digest)
        if match is None:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / match.group(1)

    def get(self, digest: str) -> StoredTOC | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
            os.utime(path)  # most recently used
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("toc_store_read_failed", layer=digest, error=str(exc))
            return None
        if len(data) <= _OFFSET_BYTES:
            self.discard(digest)
            return None
        return StoredTOC(int.from_bytes(data[:_OFFSET_BYTES], "big"), data[_OFFSET_BYTES:])

    def put(self, digest: str, stored: StoredTOC) -> bool:
        """Keep ``stored``; False if it could not be written (a full disk is no error)."""
        final = self._path(digest)
        temp = self.root / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with Writer(os.fspath(temp), os.fspath(final), fd) as writer:
                writer.write(stored.toc_offset.to_bytes(_OFFSET_BYTES, "big"))
                writer.write(stored.tail)
                writer.commit()
        except OSError as exc:
            log.warning("toc_store_write_failed", layer=digest, error=str(exc))
            return False
        self._trim()
        return True

    def discard(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(digest).unlink()

    def __len__(self) -> int:
        return sum(1 for p in self.root.iterdir() if _is_entry(p))

    def _trim(self) -> None:
        with self._lock:
            entries = [p for p in self.root.iterdir() if _is_entry(p)]
            if len(entries) <= self.keep:
                return
            by_age = sorted(entries, key=_mtime)
            for path in by_age[: len(entries) - self.keep]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _is_entry(path: Path) -> bool:
    return len(path.name) == 64 and not path.name.startswith(TEMP_PREFIX)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
