"""Building an eStargz blob from a tar layer.

Layout (docs/contracts.md, "The eStargz format"): each regular file's payload starts a new
gzip member, files larger than the chunk size are split into several members, prioritized
files come first and end at ``.prefetch.landmark``, and the TOC member and the 51-byte footer
close the blob.

Members are independent, so they are compressed on a thread pool and written in order;
zlib-ng releases the GIL, so a layer uses every core.
"""

from __future__ import annotations

import collections
import hashlib
import os
import posixpath
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lazyimage import names
from lazyimage.errors import FormatError
from lazyimage.estargz._footer import make_footer
from lazyimage.estargz._gzip import MAX_LEVEL, deflate_member
from lazyimage.estargz._priority import PriorityMatcher
from lazyimage.estargz._source import spool_tar
from lazyimage.estargz._toc import TOCEntry, clean_name, format_modtime, serialize_toc, toc_digest

__all__ = ["BuildOptions", "BuildResult", "build"]

_TAR_BLOCK = 512
_LANDMARK_CONTENT = b"\x0f"
_XATTR_PREFIX = "SCHILY.xattr."
_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.DIRTYPE: "dir",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class BuildOptions:
    chunk_size: int = names.DEFAULT_CHUNK_SIZE
    level: int = MAX_LEVEL
    prioritized: Sequence[str] = ()
    workers: int = 0  # 0: one per CPU
    tmp_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < _TAR_BLOCK:
            raise ValueError(f"chunk size {self.chunk_size} is below {_TAR_BLOCK} bytes")
        if not 0 <= self.level <= MAX_LEVEL:
            raise ValueError(f"compression level {self.level} is not in 0..{MAX_LEVEL}")


@dataclass(frozen=True)
class BuildResult:
    toc_digest: str
    diff_id: str
    uncompressed_size: int
    blob_digest: str
    blob_size: int
    toc_offset: int
    prefetch_zone: int
    source_diff_id: str
    entry_count: int


@dataclass
class _Member:
    data: bytearray = field(default_factory=bytearray)
    starts: list[TOCEntry] = field(default_factory=list)  # entries whose data begins here


def _landmark_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(_LANDMARK_CONTENT)
    info.mode = 0o644
    return info


def _xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    return {
        key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(_XATTR_PREFIX)
    }


class _NameCache:
    """Emits userName/groupName only when they change for an id, as the reference does."""

    def __init__(self) -> None:
        self._last: dict[int, str] = {}

    def __call__(self, ident: int, name: str) -> str:
        if not name or self._last.get(ident) == name:
            return ""
        self._last[ident] = name
        return name


def _read_members(tar_path: Path) -> list[tarfile.TarInfo]:
    """The tar's entries in order, deduplicated (the last one wins), TOC and landmarks dropped."""
    try:
        with tarfile.open(tar_path, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
            members = tf.getmembers()
    except tarfile.TarError as exc:
        raise FormatError(f"layer is not a valid tar stream: {exc}") from exc
    dropped = {names.TOC_TAR_NAME, names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK}
    latest: dict[str, int] = {}
    for index, info in enumerate(members):
        if info.type not in _TYPES:
            raise FormatError(f"tar entry {info.name!r} has unsupported type {info.type!r}")
        if info.sparse is not None:
            raise FormatError(f"tar entry {info.name!r} is a GNU sparse file")
        name = clean_name(info.name)
        if info.type == tarfile.LNKTYPE:
            clean_name(info.linkname)
        if name not in dropped:
            latest[name] = index
    return [members[i] for i in sorted(latest.values())]


def _order(members: list[tarfile.TarInfo], prioritized: Sequence[str]) -> list[tarfile.TarInfo]:
    """Prioritized files (with their parent dirs and hardlink targets) first, then the landmark."""
    matcher = PriorityMatcher(prioritized)
    by_name = {clean_name(m.name): m for m in members}
    ranked = [
        (rank, index, m)
        for index, m in enumerate(members)
        if (rank := matcher.rank(clean_name(m.name))) is not None
    ]
    if not ranked:
        return [_landmark_info(names.NO_PREFETCH_LANDMARK), *members]
    ordered: list[tarfile.TarInfo] = []
    placed: set[int] = set()

    def place(info: tarfile.TarInfo) -> None:
        if id(info) in placed:
            return
        name = clean_name(info.name)
        parent = posixpath.dirname(name)
        while parent:
            if (parent_info := by_name.get(parent)) is not None:
                place(parent_info)
                break
            parent = posixpath.dirname(parent)
        if info.type == tarfile.LNKTYPE and (target := by_name.get(clean_name(info.linkname))):
            place(target)
        placed.add(id(info))
        ordered.append(info)

    for _, _, info in sorted(ranked, key=lambda item: (item[0], item[1])):
        place(info)
    ordered.append(_landmark_info(names.PREFETCH_LANDMARK))
    ordered.extend(m for m in members if id(m) not in placed)
    return ordered


class _BlobWriter:
    """Compresses members on a pool and writes them in order, tracking offsets and digests."""

    def __init__(self, out: BinaryIO, level: int, workers: int) -> None:
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="estargz-deflate")
        self._pending: collections.deque[tuple[Future[bytes], list[TOCEntry]]] = collections.deque()
        self._max_pending = workers * 2
        self.position = 0
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self.uncompressed = 0

    def submit(self, member: _Member) -> None:
        if not member.data:
            if member.starts:
                raise AssertionError("an empty member cannot start an entry")
            return
        self.diff_hash.update(member.data)
        self.uncompressed += len(member.data)
        future = self._pool.submit(deflate_member, bytes(member.data), self._level)
        self._pending.append((future, member.starts))
        while len(self._pending) > self._max_pending:
            self._write_next()

    def _write_next(self) -> None:
        future, starts = self._pending.popleft()
        compressed = future.result()
        for entry in starts:
            entry.offset = self.position
        self._out.write(compressed)
        self.blob_hash.update(compressed)
        self.position += len(compressed)

    def drain(self) -> None:
        while self._pending:
            self._write_next()

    def write_raw(self, data: bytes) -> None:
        self._out.write(data)
        self.blob_hash.update(data)
        self.position += len(data)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _toc_entry(info: tarfile.TarInfo, users: _NameCache, groups: _NameCache) -> TOCEntry:
    kind = _TYPES[info.type]
    name = info.name + "/" if kind == "dir" and not info.name.endswith("/") else info.name
    entry = TOCEntry(
        name=name,
        type=kind,
        modtime=format_modtime(info.mtime),
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        user_name=users(info.uid, info.uname),
        group_name=groups(info.gid, info.gname),
        xattrs=_xattrs(info),
    )
    if kind in ("symlink", "hardlink"):
        entry.link_name = info.linkname
    elif kind in ("char", "block"):
        entry.dev_major, entry.dev_minor = info.devmajor, info.devminor
    elif kind == "reg":
        entry.size = info.size
    return entry


def _toc_tar(toc_json: bytes) -> bytes:
    header = tarfile.TarInfo(names.TOC_TAR_NAME)
    header.size = len(toc_json)
    header.mode = 0
    header.mtime = 0
    padding = -len(toc_json) % _TAR_BLOCK
    block = header.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    return block + toc_json + b"\0" * padding + b"\0" * (2 * _TAR_BLOCK)


def build(
    source: Path,
    out: BinaryIO,
    options: BuildOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Write ``source`` (a gzip, zstd or plain tar layer) to ``out`` as an eStargz blob.

    ``progress`` is called with counts of uncompressed bytes as the input is processed.
    """
    opts = options or BuildOptions()
    workers = opts.workers or os.cpu_count() or 1
    spooled = spool_tar(source, opts.tmp_dir)
    try:
        members = _order(_read_members(spooled.path), opts.prioritized)
        writer = _BlobWriter(out, opts.level, workers)
        try:
            entries = _write_entries(members, spooled.path, writer, opts.chunk_size, progress)
            writer.drain()
            toc_offset = writer.position
            toc_json = serialize_toc(entries)
            toc_tar = _toc_tar(toc_json)
            writer.diff_hash.update(toc_tar)
            writer.uncompressed += len(toc_tar)
            writer.write_raw(deflate_member(toc_tar, opts.level))
            writer.write_raw(make_footer(toc_offset))
        finally:
            writer.close()
    finally:
        spooled.cleanup()
    landmark = next((e for e in entries if e.name == names.PREFETCH_LANDMARK), None)
    return BuildResult(
        toc_digest=toc_digest(toc_json),
        diff_id="sha256:" + writer.diff_hash.hexdigest(),
        uncompressed_size=writer.uncompressed,
        blob_digest="sha256:" + writer.blob_hash.hexdigest(),
        blob_size=writer.position,
        toc_offset=toc_offset,
        prefetch_zone=landmark.offset if landmark else 0,
        source_diff_id=spooled.diff_id,
        entry_count=sum(1 for e in entries if e.type != "chunk"),
    )


def _write_entries(
    members: list[tarfile.TarInfo],
    tar_path: Path,
    writer: _BlobWriter,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> list[TOCEntry]:
    entries: list[TOCEntry] = []
    users, groups = _NameCache(), _NameCache()
    member = _Member()
    with open(tar_path, "rb") as tar:
        for info in members:
            entry = _toc_entry(info, users, groups)
            entries.append(entry)
            member.data += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if entry.type != "reg":
                continue
            if info.size == 0:
                entry.digest = "sha256:" + hashlib.sha256(b"").hexdigest()
                continue
            writer.submit(member)
            if info.name in (names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK):
                member = _landmark_member(entry)
            else:
                tar.seek(info.offset_data)
                member = _payload_members(entry, info.size, tar, writer, entries, chunk_size)
            if progress:
                progress(info.size)
            member.data += b"\0" * (-info.size % _TAR_BLOCK)
    writer.submit(member)
    return entries


def _landmark_member(entry: TOCEntry) -> _Member:
    digest = "sha256:" + hashlib.sha256(_LANDMARK_CONTENT).hexdigest()
    entry.digest = entry.chunk_digest = digest
    return _Member(bytearray(_LANDMARK_CONTENT), [entry])


def _payload_members(
    entry: TOCEntry,
    size: int,
    tar: BinaryIO,
    writer: _BlobWriter,
    entries: list[TOCEntry],
    chunk_size: int,
) -> _Member:
    """Emit a file's chunks as members; return the open member holding the last chunk."""
    whole = hashlib.sha256()
    chunk_entry = entry
    done = 0
    while True:
        length = min(chunk_size, size - done)
        data = tar.read(length)
        if len(data) != length:
            raise FormatError(f"tar entry {entry.name!r} is truncated")
        whole.update(data)
        chunk_entry.chunk_offset = done
        # Like the reference: chunkSize is written whenever a full chunk was taken.
        chunk_entry.chunk_size = chunk_size if size - done >= chunk_size else 0
        chunk_entry.chunk_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        member = _Member(bytearray(data), [chunk_entry])
        done += length
        if done == size:
            break
        writer.submit(member)
        chunk_entry = TOCEntry(name=entry.name, type="chunk")
        entries.append(chunk_entry)
    entry.digest = "sha256:" + whole.hexdigest()
    return member
