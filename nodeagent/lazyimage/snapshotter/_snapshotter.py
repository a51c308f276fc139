"""Snapshots on overlayfs, with the semantics of containerd's overlayfs snapshotter, plus remote
(lazily mounted) layers.

On disk, under ``root``::

    metadata.db            the records (see _metadata)
    snapshots/<id>/fs      the snapshot's files: the upperdir while active, a lowerdir after
    snapshots/<id>/work    overlayfs' workdir (active snapshots only)

Mounts, as containerd's overlayfs snapshotter answers them:

- no parent: a bind mount of ``fs`` (``ro`` for a view);
- active with parents: ``overlay`` with ``upperdir``, ``workdir`` and ``lowerdir=p1:p2:...``,
  nearest parent first;
- a view of one parent: a read-only bind mount of the parent's ``fs``; a view of several: an
  overlay with only lowerdirs, which overlayfs mounts read-only.

A remote snapshot is a committed snapshot whose files are a directory that a ``RemoteFS`` mounted
lazily (a FUSE subdirectory); its lowerdir is that directory instead of ``fs``.

Remote layers: containerd's unpacker calls Prepare with the label ``containerd.io/snapshot.ref``
naming the snapshot it will commit the layer as (its chain id). If a ``RemoteFS`` is configured and
mounts the layer, the snapshot is committed under that name right away, labelled
``containerd.io/snapshot/remote``, and Prepare raises SnapshotExistsError: containerd's
ALREADY_EXISTS, which makes it look the target up with List/Stat and skip the download. If the
remote declines (returns None) or fails, Prepare goes on as a normal snapshot and containerd
fills it; the reason is logged.

Thread-safety: every method may be called from any thread (the gRPC server's pool). The metadata
lock serialises record changes; slow work (disk usage walks, remote mounts and checks) runs
outside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from lazyimage.names import LABEL_SNAPSHOT_REF
from lazyimage.snapshotter._errors import (
    InvalidSnapshotError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotPreconditionError,
    SnapshotUnavailableError,
)
from lazyimage.snapshotter._filters import parse_filters
from lazyimage.snapshotter._metadata import (
    Kind,
    MetadataStore,
    Record,
    SnapshotInfo,
    Transaction,
    clean_labels,
    now_ns,
)

__all__ = [
    "REMOTE_LABEL",
    "REMOTE_LABEL_VALUE",
    "Mount",
    "RemoteFS",
    "Snapshotter",
    "Usage",
]

log = structlog.get_logger(__name__)

# The label stargz-snapshotter puts on the snapshots it committed from remote layers; the same
# label here keeps tools that look for it working.
REMOTE_LABEL = "containerd.io/snapshot/remote"
REMOTE_LABEL_VALUE = "remote snapshot"

_OVERLAY_INDEX_PARAM = Path("/sys/module/overlay/parameters/index")
_TARGET_LOCKS = 64


class RemoteFS(Protocol):
    """Lazily mounted layers, as the snapshotter uses them.

    ``name`` is the snapshot name the layer is (or will be) committed under: the value of
    ``containerd.io/snapshot.ref``, unique within the snapshotter. ``labels`` are the labels of
    the Prepare request (containerd passes the layer's ``containerd.io/snapshot/*`` annotations
    and the CRI labels there). The methods are called from gRPC worker threads, never with the
    metadata lock held; an implementation that lives on a trio loop bridges with
    ``trio.from_thread.run``. ``mount`` is called once per snapshot that it accepts, and
    ``unmount`` once when that snapshot is removed.
    """

    def mount(self, name: str, labels: Mapping[str, str]) -> Path | None:
        """Mount the layer lazily; return the directory to use as its lowerdir, or None when
        the layer is not eligible (the snapshotter then falls back to a normal snapshot).
        An exception also falls back; its message is logged as the reason."""
        ...

    def check(self, name: str, labels: Mapping[str, str]) -> None:
        """Raise if the mounted layer cannot serve reads now (asked before it is mounted
        under a new container)."""
        ...

    def unmount(self, name: str) -> None:
        """Release the layer of a removed remote snapshot."""
        ...


@dataclass(frozen=True)
class Mount:
    """One mount as containerd's ``types.Mount``: mount(2) arguments for the caller."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Usage:
    size: int = 0  # bytes of disk blocks
    inodes: int = 0


class Snapshotter:
    """containerd snapshotter semantics over overlayfs, with records under ``root``."""

    def __init__(self, root: Path, remote: RemoteFS | None = None) -> None:
        self.root = root
        self._remote = remote
        self._dir = root / "snapshots"
        self._dir.mkdir(parents=True, exist_ok=True)
        # Layers and containers' upper directories: root's alone, as in containerd.
        os.chmod(self._dir, 0o700)
        self._db = MetadataStore(root / "metadata.db")
        # "index=off" as containerd sets it: overlayfs then does not record which lower layers
        # an upperdir was used with, so layers may be remounted in other combinations.
        self._overlay_options: tuple[str, ...] = (
            ("index=off",) if _OVERLAY_INDEX_PARAM.exists() else ()
        )
        # One remote mount per target at a time, so two Prepares of the same layer cannot both
        # mount it (the remote counts mounts; one record would unmount only once).
        self._target_locks = [threading.Lock() for _ in range(_TARGET_LOCKS)]

    # -- creating ---------------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new active (writable) snapshot on ``parent``; or, for a remote layer, commit it
        under its target name and raise SnapshotExistsError."""
        cleaned = clean_labels(labels or {})
        target = cleaned.get(LABEL_SNAPSHOT_REF, "")
        if target and self._remote is not None:
            self._prepare_remote(key, parent, target, cleaned, self._remote)
        return self._create(Kind.ACTIVE, key, parent, cleaned)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new read-only snapshot of ``parent``."""
        return self._create(Kind.VIEW, key, parent, clean_labels(labels or {}))

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        _require_key(key)
        if self._remote is not None and parent:
            # Ask the lazy layers underneath first, so a failure leaves nothing behind.
            with self._db.transaction() as tx:
                base = self._committed_parent(tx, parent)
                chain = [base, *tx.chain(base)]
            self._check_remote(chain)
        with self._db.transaction() as tx:
            if tx.get(key) is not None:
                raise SnapshotExistsError(f"snapshot {key!r}: already exists")
            parent_record = self._committed_parent(tx, parent) if parent else None
            # Built under a temporary name and renamed once the record exists, inside the
            # transaction, so Cleanup never sees a half-made directory as an orphan of its own.
            temp = Path(tempfile.mkdtemp(prefix="new-", dir=self._dir))
            try:
                _make_dir(temp / "fs", 0o755)
                if kind is Kind.ACTIVE:
                    _make_dir(temp / "work", 0o711)
                record = tx.insert(key, kind, parent_record, labels, now_ns=now_ns())
                chain = tx.chain(record)
                if chain:
                    # Like containerd: the new upperdir's root is owned as the parent's root.
                    st = os.stat(self._files(chain[0]))
                    os.lchown(temp / "fs", st.st_uid, st.st_gid)
                os.rename(temp, self._dir / str(record.id))
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
        return self._mounts(record, chain)

    def _prepare_remote(
        self, key: str, parent: str, target: str, labels: Mapping[str, str], remote: RemoteFS
    ) -> None:
        """Commit ``target`` from a lazily mounted layer and raise SnapshotExistsError, or
        return to fall back to a normal snapshot."""
        _require_key(key)
        with self._target_locks[hash(target) % _TARGET_LOCKS]:
            with self._db.transaction() as tx:
                if tx.get(key) is not None:
                    raise SnapshotExistsError(f"snapshot {key!r}: already exists")
                if parent:
                    self._committed_parent(tx, parent)
                existing = tx.get(target)
            if existing is not None:
                if existing.kind is Kind.COMMITTED and existing.info.parent == parent:
                    raise SnapshotExistsError(f"target snapshot {target!r}: already exists")
                # Another snapshot has the name; containerd would not take it for the target,
                # so the layer goes the normal way (and its Commit reports the clash).
                _log_remote(key, target, prepared=False, reason="target name taken")
                return
            try:
                lowerdir = remote.mount(target, labels)
            except Exception as exc:
                _log_remote(key, target, prepared=False, reason=f"{type(exc).__name__}: {exc}")
                return
            if lowerdir is None:
                _log_remote(key, target, prepared=False, reason="not eligible for a lazy mount")
                return
            try:
                with self._db.transaction() as tx:
                    parent_record = self._committed_parent(tx, parent) if parent else None
                    committed = {**labels, REMOTE_LABEL: REMOTE_LABEL_VALUE}
                    record = tx.insert(
                        target,
                        Kind.COMMITTED,
                        parent_record,
                        committed,
                        now_ns=now_ns(),
                        remote_dir=str(lowerdir),
                    )
                    # An empty directory keeps the layout uniform (and Cleanup from calling
                    # the record's id an orphan); the files are in the remote's lowerdir.
                    _make_dir(self._dir / str(record.id), 0o700)
                    _make_dir(self._dir / str(record.id) / "fs", 0o755)
            except BaseException:
                _release(remote, target)
                raise
        _log_remote(key, target, prepared=True, lowerdir=str(lowerdir))
        raise SnapshotExistsError(f"target snapshot {target!r}: already exists")

    # -- reading ----------------------------------------------------------------------------

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or a view."""
        with self._db.transaction() as tx:
            record = self._get(tx, key)
            if record.kind is Kind.COMMITTED:
                raise SnapshotPreconditionError(f"snapshot {key!r} is not active or view")
            chain = tx.chain(record)
        self._check_remote(chain)
        return self._mounts(record, chain)

    def stat(self, key: str) -> SnapshotInfo:
        with self._db.transaction() as tx:
            return self._get(tx, key).info

    def walk(self, filters: Sequence[str] = ()) -> list[SnapshotInfo]:
        """Every snapshot matching any of ``filters`` (containerd's filter syntax): what
        containerd's Walk and the List call answer."""
        selected = parse_filters(filters)
        with self._db.transaction() as tx:
            records = tx.all()
        return [r.info for r in records if selected.matches(r.info.field)]

    def usage(self, key: str) -> Usage:
        """Disk use: measured now for an active snapshot, as recorded at commit otherwise."""
        with self._db.transaction() as tx:
            record = self._get(tx, key)
        if record.kind is Kind.ACTIVE:
            return _disk_usage(self._files(record))
        return Usage(record.size, record.inodes)

    # -- changing ---------------------------------------------------------------------------

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``; the labels of
        the commit replace the active snapshot's, as in containerd."""
        _require_key(name)
        cleaned = clean_labels(labels or {})
        with self._db.transaction() as tx:
            record = self._committable(tx, name, key)
        # Walked outside the lock: the snapshot is unmounted by now, and the checks are
        # repeated below in case it changed meanwhile.
        usage = _disk_usage(self._files(record))
        with self._db.transaction() as tx:
            record = self._committable(tx, name, key)
            tx.commit(record, name, cleaned, size=usage.size, inodes=usage.inodes, now_ns=now_ns())

    def _committable(self, tx: Transaction, name: str, key: str) -> Record:
        if tx.get(name) is not None:
            raise SnapshotExistsError(f"committed snapshot {name!r}: already exists")
        record = self._get(tx, key)
        if record.kind is not Kind.ACTIVE:
            raise SnapshotPreconditionError(f"snapshot {key!r} is not active")
        return record

    def update(
        self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()
    ) -> SnapshotInfo:
        """Change labels: ``labels`` replaces them all, ``labels.K`` sets (or, with no value in
        ``labels``, deletes) one; no paths means all mutable fields, which is the labels."""
        _require_key(name)
        with self._db.transaction() as tx:
            record = self._get(tx, name)
            updated = dict(record.info.labels)
            for path in fieldpaths:
                if path.startswith("labels."):
                    label = path.removeprefix("labels.")
                    updated[label] = labels.get(label, "")
                elif path == "labels":
                    updated = dict(labels)
                else:
                    raise InvalidSnapshotError(f"cannot update {path!r} field on snapshot {name!r}")
            if not fieldpaths:
                updated = dict(labels)
            return tx.set_labels(record, clean_labels(updated), now_ns=now_ns()).info

    def remove(self, key: str) -> None:
        """Remove a snapshot that no other snapshot has as its parent."""
        with self._db.transaction() as tx:
            record = self._get(tx, key)
            if tx.has_children(record):
                raise SnapshotPreconditionError(f"cannot remove snapshot {key!r} with child")
            tx.delete(record)
        if record.remote_dir is not None and self._remote is not None:
            _release(self._remote, record.key)
        _remove_dir(self._dir / str(record.id))

    def cleanup(self) -> None:
        """Remove directories no record owns: leftovers of failed removals and crashes."""
        with self._db.transaction() as tx:
            owned = {str(rid) for rid in tx.ids()}
            # Listed under the lock: creation finishes its directory inside its transaction,
            # so whatever is unowned now stays unowned.
            orphans = [p for p in self._dir.iterdir() if p.name not in owned]
        for path in orphans:
            _remove_dir(path)

    def restore(self) -> dict[str, str]:
        """Mount the layers of the remote snapshots again (after a restart), from their
        stored labels. Returns the snapshots that could not be mounted, with the reason; the
        others are not held back by them."""
        if self._remote is None:
            return {}
        with self._db.transaction() as tx:
            remote = [r for r in tx.all() if r.remote_dir is not None]
        failed: dict[str, str] = {}
        for record in remote:
            labels = {k: v for k, v in record.info.labels.items() if k != REMOTE_LABEL}
            try:
                lowerdir = self._remote.mount(record.key, labels)
            except Exception as exc:
                failed[record.key] = f"{type(exc).__name__}: {exc}"
                continue
            if lowerdir is None:
                failed[record.key] = "the remote declined the layer"
                continue
            if str(lowerdir) != record.remote_dir:
                with self._db.transaction() as tx:
                    tx.set_remote_dir(record, str(lowerdir))
        for key, reason in failed.items():
            log.warning("remote_snapshot_not_restored", key=key, reason=reason)
        return failed

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    def _get(self, tx: Transaction, key: str) -> Record:
        record = tx.get(key)
        if record is None:
            raise SnapshotNotFoundError(f"snapshot {key!r} does not exist")
        return record

    def _committed_parent(self, tx: Transaction, parent: str) -> Record:
        record = tx.get(parent)
        if record is None:
            raise SnapshotNotFoundError(f"parent snapshot {parent!r} does not exist")
        if record.kind is not Kind.COMMITTED:
            raise InvalidSnapshotError(f"parent {parent!r} is not a committed snapshot")
        return record

    def _files(self, record: Record) -> Path:
        """The directory holding the snapshot's files."""
        if record.remote_dir is not None:
            return Path(record.remote_dir)
        return self._dir / str(record.id) / "fs"

    def _check_remote(self, chain: Sequence[Record]) -> None:
        if self._remote is None:
            return
        for record in chain:
            if record.remote_dir is None:
                continue
            try:
                self._remote.check(record.key, record.info.labels)
            except Exception as exc:
                raise SnapshotUnavailableError(
                    f"remote layer of snapshot {record.key!r} is unavailable: {exc}"
                ) from exc

    def _mounts(self, record: Record, chain: Sequence[Record]) -> list[Mount]:
        if not chain:
            mode = "ro" if record.kind is Kind.VIEW else "rw"
            return [Mount("bind", str(self._files(record)), (mode, "rbind"))]
        if record.kind is not Kind.ACTIVE and len(chain) == 1:
            return [Mount("bind", str(self._files(chain[0])), ("ro", "rbind"))]
        options = list(self._overlay_options)
        if record.kind is Kind.ACTIVE:
            snapshot_dir = self._dir / str(record.id)
            options += [f"workdir={snapshot_dir / 'work'}", f"upperdir={snapshot_dir / 'fs'}"]
        options.append("lowerdir=" + ":".join(str(self._files(p)) for p in chain))
        return [Mount("overlay", "overlay", tuple(options))]


def _require_key(key: str) -> None:
    if not key:
        raise InvalidSnapshotError("snapshot key must not be empty")


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir()
    os.chmod(path, mode)  # whatever the process umask is (containerd's test suite clears it)


def _release(remote: RemoteFS, name: str) -> None:
    try:
        remote.unmount(name)
    except Exception as exc:
        log.warning("remote_unmount_failed", key=name, reason=f"{type(exc).__name__}: {exc}")


def _remove_dir(path: Path) -> None:
    """Delete a snapshot directory, but never through a mount left on it: rmtree would
    delete the mounted filesystem's files. Failures are logged; Cleanup retries."""
    if not path.exists():
        return
    for sub in (path, path / "fs"):
        if os.path.ismount(sub):
            log.warning("snapshot_dir_still_mounted", path=str(sub))
            return
    try:
        shutil.rmtree(path)
    except OSError as exc:
        log.warning("snapshot_dir_not_removed", path=str(path), reason=str(exc))


def _disk_usage(path: Path) -> Usage:
    """Blocks and inodes under ``path``, counting hard links once, as containerd measures."""
    seen: set[tuple[int, int]] = set()
    size = 0

    def visit(p: str) -> None:
        nonlocal size
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        ident = (st.st_dev, st.st_ino)
        if ident not in seen:
            seen.add(ident)
            size += st.st_blocks * 512

    visit(str(path))
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            visit(os.path.join(dirpath, name))
    return Usage(size, len(seen))


def _log_remote(key: str, target: str, *, prepared: bool, **fields: str) -> None:
    log.info("remote_snapshot", key=key, target=target, remote_snapshot_prepared=prepared, **fields)
