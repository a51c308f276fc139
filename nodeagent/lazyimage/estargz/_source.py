"""Turning a layer blob (gzip, zstd or plain tar) into a seekable plain tar file."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard
from isal import igzip

from lazyimage.errors import FormatError

__all__ = ["SpooledTar", "detect_compression", "spool_tar"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_COPY_BUFFER = 1 << 20


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from a blob's first bytes."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


@dataclass
class SpooledTar:
    """A plain tar on disk, and the sha256 of its bytes (the layer's DiffID)."""

    path: Path
    diff_id: str
    size: int
    owned: bool

    def cleanup(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)


class _Source(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _copy_hashing(
    reader: _Source, writer: _Sink, progress: Callable[[int], None] | None
) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while block := reader.read(_COPY_BUFFER):
        digest.update(block)
        writer.write(block)
        total += len(block)
        if progress:
            progress(len(block))
    return "sha256:" + digest.hexdigest(), total


def spool_tar(
    source: Path,
    tmp_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> SpooledTar:
    """Decompress ``source`` to a temporary plain tar, or hash it in place if already plain."""
    with open(source, "rb") as raw:
        kind = detect_compression(raw.read(4))
        raw.seek(0)
        if kind == "none":
            digest, size = _copy_hashing(raw, _NullWriter(), progress)
            return SpooledTar(source, digest, size, owned=False)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="lazyimage-tar-", suffix=".tar")
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as out:
                if kind == "gzip":
                    with igzip.IGzipFile(fileobj=raw, mode="rb") as reader:  # type: ignore[no-untyped-call]
                        digest, size = _copy_hashing(reader, out, progress)
                else:
                    dctx = zstandard.ZstdDecompressor()
                    with dctx.stream_reader(raw, read_across_frames=True) as zreader:
                        digest, size = _copy_hashing(zreader, out, progress)
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            tmp.unlink(missing_ok=True)
            raise FormatError(f"cannot decompress {kind} layer: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SpooledTar(tmp, digest, size, owned=True)


class _NullWriter:
    def write(self, data: bytes) -> int:
        return len(data)
