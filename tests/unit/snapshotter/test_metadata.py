"""Snapshot records in sqlite: persistence across reopening, ids, label rules and limits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from lazyimage.snapshotter import MAX_LABEL_SIZE, InvalidSnapshotError, Kind, Snapshotter
from lazyimage.snapshotter._metadata import MetadataStore, clean_labels


@pytest.mark.timeout(10)
def test_everything_is_there_after_reopening(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("base-active", labels={"a": "1"})
        sn.commit("base", "base-active", labels={"containerd.io/gc.root": "x", "k": "v"})
        sn.prepare("child", "base", labels={"c": "3"})
        sn.view("look", "base")
        sn.update("child", {"d": "4"}, ["labels.d"])
        before = {i.name: i for i in sn.walk()}
        usage = sn.usage("base")

    with Snapshotter(tmp_path) as sn:
        after = {i.name: i for i in sn.walk()}
        assert after == before
        assert set(after) == {"base", "child", "look"}
        assert after["base"].kind is Kind.COMMITTED
        assert after["base"].labels == {"containerd.io/gc.root": "x", "k": "v"}
        assert after["child"].parent == "base"
        assert after["child"].kind is Kind.ACTIVE
        assert after["child"].labels == {"c": "3", "d": "4"}
        assert after["child"].updated_ns > after["child"].created_ns
        assert after["look"].kind is Kind.VIEW
        assert sn.usage("base") == usage
        # The tree still holds: a parent with children cannot go, and the chain still mounts.
        assert sn.mounts("child")[0].type == "overlay"
        sn.remove("child")
        sn.remove("look")
        sn.remove("base")
        assert sn.walk() == []


@pytest.mark.timeout(10)
def test_ids_are_never_reused(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("one")
        sn.remove("one")
        sn.prepare("two")
    with Snapshotter(tmp_path) as sn:
        sn.prepare("three")
        dirs = sorted(int(p.name) for p in (tmp_path / "snapshots").iterdir())
    assert dirs == [2, 3]


@pytest.mark.timeout(10)
def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    MetadataStore(tmp_path / "metadata.db").close()
    with sqlite3.connect(tmp_path / "metadata.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        MetadataStore(tmp_path / "metadata.db")


@pytest.mark.timeout(10)
def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.db")
    with store.transaction() as tx:
        tx.insert("kept", Kind.ACTIVE, None, {}, now_ns=1)
    with pytest.raises(ZeroDivisionError), store.transaction() as tx:
        tx.insert("lost", Kind.ACTIVE, None, {}, now_ns=2)
        raise ZeroDivisionError
    with store.transaction() as tx:
        assert [r.key for r in tx.all()] == ["kept"]
    store.close()
    store.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"), store.transaction():
        pass


@pytest.mark.timeout(10)
def test_label_limit_is_key_plus_value_bytes() -> None:
    key = "k" * 96
    assert clean_labels({key: "v" * (MAX_LABEL_SIZE - len(key))}) != {}
    with pytest.raises(InvalidSnapshotError, match="greater than maximum size"):
        clean_labels({key: "v" * (MAX_LABEL_SIZE - len(key) + 1)})
    # Bytes, not characters: "é" is two bytes in UTF-8.
    with pytest.raises(InvalidSnapshotError):
        clean_labels({"k": "é" * (MAX_LABEL_SIZE // 2)})


@pytest.mark.timeout(10)
def test_empty_label_values_are_not_stored() -> None:
    assert clean_labels({"a": "", "b": "1"}) == {"b": "1"}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("call", ["prepare", "view", "commit", "update"])
def test_limits_apply_to_every_call_that_takes_labels(tmp_path: Path, call: str) -> None:
    too_big = {"big": "x" * MAX_LABEL_SIZE}
    with Snapshotter(tmp_path) as sn:
        sn.prepare("active")
        with pytest.raises(InvalidSnapshotError):
            if call == "prepare":
                sn.prepare("new", labels=too_big)
            elif call == "view":
                sn.view("new", labels=too_big)
            elif call == "commit":
                sn.commit("committed", "active", labels=too_big)
            else:
                sn.update("active", too_big, ["labels.big"])
        assert [i.name for i in sn.walk()] == ["active"]
        assert sn.stat("active").labels == {}
