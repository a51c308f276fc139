"""Snapshot records, persisted in one sqlite database.

A record is what containerd's own storage keeps for a snapshot: its key (the name, once
committed), kind, parent, labels and times, plus what only we need: the numeric id that names
its directory, the usage measured at commit, and for a remote snapshot the directory of its
lazily mounted layer.

- Ids come from AUTOINCREMENT and are never reused, so a directory left behind by a failed
  removal can never be mistaken for a newer snapshot's.
- Parents are referenced by id (with a foreign key), so committing a snapshot, which renames
  its key, never touches its children.
- Every change runs in one ``BEGIN IMMEDIATE`` transaction under a process-wide lock; the
  gRPC server calls in from several threads and sqlite connections are not safe to share
  without one. The database is WAL with full fsync: a record that containerd was told about
  survives a crash of the agent or the machine.

Labels follow containerd's rules: a label whose value is empty is not stored (an update that
sets a label to "" deletes it), and a key and value together are at most 4096 bytes.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lazyimage.snapshotter._errors import InvalidSnapshotError

__all__ = [
    "MAX_LABEL_SIZE",
    "Kind",
    "MetadataStore",
    "Record",
    "SnapshotInfo",
    "Transaction",
    "clean_labels",
    "now_ns",
]

MAX_LABEL_SIZE = 4096  # bytes of key plus value, as containerd's labels.Validate
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
    parent_id INTEGER REFERENCES snapshots (id),
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    labels TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    remote_dir TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots (parent_id);
"""
_SELECT = """
SELECT s.id, s.key, s.kind, s.parent_id, p.key, s.created_ns, s.updated_ns, s.labels,
       s.size, s.inodes, s.remote_dir
FROM snapshots AS s LEFT JOIN snapshots AS p ON p.id = s.parent_id
"""
_Row = tuple[int, str, int, int | None, str | None, int, int, str, int, int, str | None]


class Kind(enum.IntEnum):
    """A snapshot's kind; the values are those of the proto's ``Kind`` enum."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def filter_name(self) -> str:
        """The word containerd's filters use (``kind==committed``)."""
        return self.name.lower()


@dataclass(frozen=True)
class SnapshotInfo:
    """What Stat, List and Update answer: containerd's ``snapshots.Info``."""

    name: str
    kind: Kind
    parent: str = ""
    created_ns: int = 0
    updated_ns: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        """The filter adaptor of containerd's snapshot storage: kind, name, parent, labels.K."""
        if not path:
            return "", False
        head = path[0]
        if head == "kind":
            return self.kind.filter_name, True
        if head == "name":
            return self.name, True
        if head == "parent":
            return self.parent, True
        if head == "labels":
            key = ".".join(path[1:])
            if key in self.labels:
                return self.labels[key], True
        return "", False


@dataclass(frozen=True)
class Record:
    """One stored snapshot."""

    id: int
    info: SnapshotInfo
    parent_id: int | None = None
    size: int = 0  # bytes and inodes of its directory, measured when it was committed
    inodes: int = 0
    remote_dir: str | None = None  # the lazily mounted layer, for a remote snapshot

    @property
    def key(self) -> str:
        return self.info.name

    @property
    def kind(self) -> Kind:
        return self.info.kind


def clean_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Validate sizes and drop empty values, as containerd does before it stores labels."""
    for key, value in labels.items():
        size = len(key.encode("utf-8", "surrogateescape")) + len(
            value.encode("utf-8", "surrogateescape")
        )
        if size > MAX_LABEL_SIZE:
            raise InvalidSnapshotError(
                f"label key and value length ({size} bytes) greater than maximum size "
                f"({MAX_LABEL_SIZE} bytes), key: {key[:64]}"
            )
    return {k: v for k, v in labels.items() if v != ""}


def _record(row: _Row) -> Record:
    rid, key, kind, parent_id, parent, created, updated, labels, size, inodes, remote = row
    info = SnapshotInfo(key, Kind(kind), parent or "", created, updated, json.loads(labels))
    return Record(rid, info, parent_id, size, inodes, remote)


def _dump(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), ensure_ascii=False)


class Transaction:
    """Reads and writes inside one sqlite transaction; only MetadataStore makes these."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _one(self, where: str, *args: object) -> Record | None:
        row = self._conn.execute(f"{_SELECT} WHERE {where}", args).fetchone()
        return None if row is None else _record(row)

    def get(self, key: str) -> Record | None:
        return self._one("s.key = ?", key)

    def by_id(self, rid: int) -> Record | None:
        return self._one("s.id = ?", rid)

    def all(self) -> list[Record]:
        return [_record(row) for row in self._conn.execute(f"{_SELECT} ORDER BY s.id")]

    def ids(self) -> set[int]:
        return {rid for (rid,) in self._conn.execute("SELECT id FROM snapshots")}

    def has_children(self, record: Record) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (record.id,)
        ).fetchone()
        return row is not None

    def chain(self, record: Record) -> list[Record]:
        """The record's ancestors, nearest first (the order overlayfs wants its lowerdirs)."""
        ancestors = []
        parent_id = record.parent_id
        while parent_id is not None:
            parent = self.by_id(parent_id)
            if parent is None:  # the foreign key makes this unreachable
                raise RuntimeError(f"snapshot {record.key!r} has a dangling parent {parent_id}")
            ancestors.append(parent)
            parent_id = parent.parent_id
        return ancestors

    def insert(
        self,
        key: str,
        kind: Kind,
        parent: Record | None,
        labels: Mapping[str, str],
        *,
        now_ns: int,
        remote_dir: str | None = None,
    ) -> Record:
        cursor = self._conn.execute(
            "INSERT INTO snapshots (key, kind, parent_id, created_ns, updated_ns, labels,"
            " remote_dir) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                int(kind),
                None if parent is None else parent.id,
                now_ns,
                now_ns,
                _dump(labels),
                remote_dir,
            ),
        )
        rid = cursor.lastrowid
        assert rid is not None
        record = self.by_id(rid)
        assert record is not None
        return record

    def commit(
        self,
        record: Record,
        name: str,
        labels: Mapping[str, str],
        *,
        size: int,
        inodes: int,
        now_ns: int,
    ) -> Record:
        """Turn an active record into the committed snapshot ``name``, keeping its id."""
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = ?, created_ns = ?, updated_ns = ?,"
            " labels = ?, size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), now_ns, now_ns, _dump(labels), size, inodes, record.id),
        )
        updated = self.by_id(record.id)
        assert updated is not None
        return updated

    def set_labels(self, record: Record, labels: Mapping[str, str], *, now_ns: int) -> Record:
        self._conn.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
            (_dump(labels), now_ns, record.id),
        )
        updated = self.by_id(record.id)
        assert updated is not None
        return updated

    def set_remote_dir(self, record: Record, remote_dir: str) -> None:
        self._conn.execute(
            "UPDATE snapshots SET remote_dir = ? WHERE id = ?", (remote_dir, record.id)
        )

    def delete(self, record: Record) -> None:
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (record.id,))


class MetadataStore:
    """The snapshot database at ``path``; created on first open."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and ended explicitly below.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path}: snapshot database schema {version} is newer than this "
                    f"lazyimage understands ({_SCHEMA_VERSION})"
                )
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the snapshot database is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def now_ns() -> int:
    """Wall-clock time for created/updated stamps (containerd compares them to its own clock)."""
    return time.time_ns()
