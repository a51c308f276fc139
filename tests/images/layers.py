"""Deterministic layer blobs: PAX tar streams written with ``tarfile``, gzip with mtime 0.

The same rootfs (same bytes, same metadata) always gives the same blobs: members are
sorted, owner names are left empty (ids are kept), mtimes are whole seconds clamped to
an epoch, and the gzip header carries no name and no time.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, cast

from tests.images.recipes import LayerSplit

__all__ = [
    "GZIP_LEVEL",
    "LayerBlob",
    "LayerWriter",
    "add_rootfs_path",
    "assign_layers",
    "walk_rootfs",
    "xattr_pax_headers",
]

GZIP_LEVEL = 6


@dataclass(frozen=True)
class LayerBlob:
    """A finished gzip layer: where it is and what it hashes to."""

    path: Path
    digest: str  # sha256 of the gzip bytes
    size: int
    diff_id: str  # sha256 of the uncompressed tar
    uncompressed_size: int
    entries: int


class _HashingSink:
    """Write-only file object that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile) -> None:
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)


class LayerWriter:
    """Context manager: ``with LayerWriter(path) as tar: ...``, then ``.result``."""

    def __init__(self, path: Path, *, level: int = GZIP_LEVEL) -> None:
        self.path = path
        self._level = level
        self._result: LayerBlob | None = None
        self.entries = 0

    def __enter__(self) -> tarfile.TarFile:
        self._raw = open(self.path, "wb")
        self._compressed = _HashingSink(self._raw)
        self._gzip = gzip.GzipFile(
            filename="",
            mode="wb",
            compresslevel=self._level,
            fileobj=cast(IO[bytes], self._compressed),
            mtime=0,
        )
        self._uncompressed = _HashingSink(self._gzip)
        self._tar = tarfile.open(
            fileobj=cast(IO[bytes], self._uncompressed),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
        )
        return self._tar

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.entries = len(self._tar.getmembers())
            self._tar.close()
            self._gzip.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
        finally:
            self._raw.close()
        if exc_type is None:
            self._result = LayerBlob(
                path=self.path,
                digest="sha256:" + self._compressed.hash.hexdigest(),
                size=self._compressed.size,
                diff_id="sha256:" + self._uncompressed.hash.hexdigest(),
                uncompressed_size=self._uncompressed.size,
                entries=self.entries,
            )

    @property
    def result(self) -> LayerBlob:
        if self._result is None:
            raise RuntimeError(f"layer {self.path} was not finished")
        return self._result


def walk_rootfs(root: Path) -> Iterator[str]:
    """Every path below ``root``, relative, in sorted order (a directory before its contents).

    Symlinks to directories are listed, never followed.
    """

    def walk(abs_dir: str, rel_dir: str) -> Iterator[str]:
        with os.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            yield rel
            if entry.is_dir(follow_symlinks=False):
                yield from walk(entry.path, rel)

    yield from walk(os.fspath(root), "")


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def assign_layers(
    root: Path, splits: Sequence[LayerSplit], *, log: Callable[[str], None] = print
) -> list[list[str]]:
    """Split the paths of ``root`` into ``1 + len(splits)`` sorted lists, by ``LayerSplit``.

    Files sharing an inode stay together (a tar hardlink must point into its own layer):
    all of them go to the latest layer any of them was assigned to. Each later layer also
    lists the parent directories of its paths, as image builders do, so a layer unpacks on
    its own.
    """
    layer_of: dict[str, int] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel in walk_rootfs(root):
        parent = rel.rpartition("/")[0]
        inherited = layer_of.get(parent, 0) if parent else 0
        if inherited:
            layer_of[rel] = inherited
        else:
            layer_of[rel] = next(
                (i for i, s in enumerate(splits, start=1) if _matches(rel, s.patterns)), 0
            )
        st = os.lstat(root / rel)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for group in inodes.values():
        target = max(layer_of[p] for p in group)
        moved = [p for p in group if layer_of[p] != target]
        if moved:
            log(f"hardlinks {', '.join(group)} kept together in layer {target}")
        for p in group:
            layer_of[p] = target
    layers: list[set[str]] = [set() for _ in range(len(splits) + 1)]
    for rel, index in layer_of.items():
        layers[index].add(rel)
        if index:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                layers[index].add("/".join(parts[:i]))
    return [sorted(paths) for paths in layers]


def xattr_pax_headers(path: Path) -> dict[str, str]:
    """PAX ``SCHILY.xattr.*`` records for the extended attributes of ``path`` (not followed)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers: dict[str, str] = {}
    for name in sorted(names):
        value = os.getxattr(path, name, follow_symlinks=False)
        headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    if any(_has_surrogates(v) for v in headers.values()):
        # tarfile writes values byte for byte only under hdrcharset=BINARY.
        headers["hdrcharset"] = "BINARY"
    return headers


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def add_rootfs_path(
    tar: tarfile.TarFile,
    root: Path,
    rel: str,
    *,
    epoch: int,
    log: Callable[[str], None] = print,
) -> None:
    """Append ``root/rel`` to ``tar`` as ``rel``: numeric ids, mtime clamped to ``epoch``.

    A second name of an inode already in this tar becomes a hardlink entry (``tarfile``
    tracks inodes per archive). Sockets cannot be stored in a tar and are skipped.
    """
    abs_path = root / rel
    info = tar.gettarinfo(os.fspath(abs_path), arcname=rel)
    if info is None:
        log(f"skipped {rel}: sockets cannot be stored in a layer")
        return
    info.uname = ""
    info.gname = ""
    info.mtime = min(int(info.mtime), epoch)
    info.pax_headers = xattr_pax_headers(abs_path)
    if info.isreg():
        with open(abs_path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)
