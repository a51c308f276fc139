"""The TOC store: a layer's blob end kept by TOC digest, least recently used dropped first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lazyimage.cache import StoredTOC, TOCStore

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_round_trip_and_blob_size(tmp_path: Path) -> None:
    store = TOCStore(tmp_path / "tocs")
    assert store.get(A) is None
    assert store.put(A, StoredTOC(1_000_000, b"member+footer"))
    got = store.get(A)
    assert got == StoredTOC(1_000_000, b"member+footer")
    assert got is not None and got.blob_size == 1_000_000 + len(b"member+footer")
    assert len(store) == 1
    store.discard(A)
    assert store.get(A) is None and len(store) == 0
    store.discard(A)  # discarding a missing entry is fine


def test_least_recently_used_go_first(tmp_path: Path) -> None:
    store = TOCStore(tmp_path, keep=2)
    store.put(A, StoredTOC(1, b"a"))
    store.put(B, StoredTOC(2, b"b"))
    past = (1_000_000_000, 1_000_000_000)
    os.utime(tmp_path / ("b" * 64), past)
    os.utime(tmp_path / ("a" * 64), (past[0] + 10, past[1] + 10))
    assert store.get(A) is not None  # A used now: B is the oldest
    store.put(C, StoredTOC(3, b"c"))
    assert len(store) == 2
    assert store.get(B) is None
    assert store.get(A) is not None and store.get(C) is not None


def test_damaged_leftover_and_unwritable(tmp_path: Path) -> None:
    root = tmp_path / "tocs"
    root.mkdir()
    (root / ".tmp-0123").write_bytes(b"torn")
    (root / ("a" * 64)).write_bytes(b"short")  # shorter than its offset field
    store = TOCStore(root)
    assert not (root / ".tmp-0123").exists()
    assert store.get(A) is None
    assert not (root / ("a" * 64)).exists()
    with pytest.raises(ValueError):
        store.get("sha256:xyz")
    shutil.rmtree(root)  # the disk went away under it: a failed put, not an exception
    assert store.put(B, StoredTOC(1, b"b")) is False
    with pytest.raises(ValueError):
        TOCStore(tmp_path / "other", keep=0)
