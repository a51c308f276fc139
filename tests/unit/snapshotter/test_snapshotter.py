"""Snapshotter semantics without mounting: kinds, parents, mounts, errors, usage, cleanup, and
the remote-layer path with a fake RemoteFS."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import structlog
from lazyimage import snapshotter as snapshotter_pkg
from lazyimage.names import LABEL_SNAPSHOT_REF
from lazyimage.snapshotter import (
    REMOTE_LABEL,
    REMOTE_LABEL_VALUE,
    InvalidSnapshotError,
    Kind,
    Mount,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotPreconditionError,
    Snapshotter,
    SnapshotUnavailableError,
    Usage,
)

from tests.unit.snapshotter.helpers import FakeRemote

_INDEX = ("index=off",) if Path("/sys/module/overlay/parameters/index").exists() else ()


def _fs(root: Path, sid: int) -> str:
    return str(root / "snapshots" / str(sid) / "fs")


@pytest.mark.timeout(10)
def test_exports() -> None:
    assert len(set(snapshotter_pkg.__all__)) == len(snapshotter_pkg.__all__)
    for name in snapshotter_pkg.__all__:
        obj = getattr(snapshotter_pkg, name)
        if callable(obj):
            assert obj.__module__.startswith("lazyimage.snapshotter._")


@pytest.mark.timeout(10)
def test_mount_shapes(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        assert sn.prepare("a") == [Mount("bind", _fs(tmp_path, 1), ("rw", "rbind"))]
        assert sn.view("v0") == [Mount("bind", _fs(tmp_path, 2), ("ro", "rbind"))]
        sn.commit("c1", "a")
        work, upper = tmp_path / "snapshots/3/work", tmp_path / "snapshots/3/fs"
        assert sn.prepare("b", "c1") == [
            Mount(
                "overlay",
                "overlay",
                (*_INDEX, f"workdir={work}", f"upperdir={upper}", f"lowerdir={_fs(tmp_path, 1)}"),
            )
        ]
        # A view of one parent is a read-only bind of it; of several, an overlay of lowers.
        assert sn.view("v1", "c1") == [Mount("bind", _fs(tmp_path, 1), ("ro", "rbind"))]
        sn.commit("c2", "b")
        assert sn.view("v2", "c2") == [
            Mount(
                "overlay",
                "overlay",
                (*_INDEX, f"lowerdir={_fs(tmp_path, 3)}:{_fs(tmp_path, 1)}"),
            )
        ]
        assert sn.mounts("v2") == sn.mounts("v2")  # Mounts answers the same again
        assert sn.mounts("v1") == [Mount("bind", _fs(tmp_path, 1), ("ro", "rbind"))]


@pytest.mark.timeout(10)
def test_directories_modes_and_ownership(tmp_path: Path) -> None:
    old = os.umask(0)  # containerd's suite clears the umask; modes must not depend on it
    try:
        with Snapshotter(tmp_path) as sn:
            sn.prepare("a")
            os.chown(_fs(tmp_path, 1), 1234, 5678)
            sn.commit("c", "a")
            sn.prepare("b", "c")
    finally:
        os.umask(old)
    fs, work = tmp_path / "snapshots/2/fs", tmp_path / "snapshots/2/work"
    assert fs.stat().st_mode & 0o777 == 0o755
    assert work.stat().st_mode & 0o777 == 0o711
    assert (fs.stat().st_uid, fs.stat().st_gid) == (1234, 5678)  # as its parent's root
    assert (tmp_path / "snapshots").stat().st_mode & 0o777 == 0o700


@pytest.mark.timeout(10)
def test_commit_keeps_the_directory_and_replaces_labels(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("a", labels={"from-prepare": "1"})
        Path(_fs(tmp_path, 1), "file").write_bytes(b"x" * 10_000)
        before = time.time_ns()
        sn.commit("c", "a", labels={"from-commit": "2"})
        info = sn.stat("c")
        assert info.kind is Kind.COMMITTED
        assert info.labels == {"from-commit": "2"}
        assert before <= info.created_ns == info.updated_ns <= time.time_ns()
        assert Path(_fs(tmp_path, 1), "file").exists()
        with pytest.raises(SnapshotNotFoundError):
            sn.stat("a")
        usage = sn.usage("c")
        assert usage.inodes == 2 and usage.size >= 10_000


@pytest.mark.timeout(10)
def test_usage_of_active_is_measured_now_and_counts_hard_links_once(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("a")
        assert sn.usage("a").inodes == 1  # the directory itself
        Path(_fs(tmp_path, 1), "f").write_bytes(b"y" * 8192)
        os.link(Path(_fs(tmp_path, 1), "f"), Path(_fs(tmp_path, 1), "g"))
        Path(_fs(tmp_path, 1), "d").mkdir()
        usage = sn.usage("a")
        assert usage.inodes == 3
        assert 8192 <= usage.size < 8192 + 3 * 8192
        assert sn.view("v") and sn.usage("v") == Usage(0, 0)


@pytest.mark.timeout(10)
def test_error_classes(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("active")
        sn.prepare("to-commit")
        sn.commit("committed", "to-commit")
        sn.view("view", "committed")

        cases: list[tuple[type[Exception], list[Callable[[], object]]]] = [
            (
                SnapshotNotFoundError,
                [
                    lambda: sn.stat("missing"),
                    lambda: sn.mounts("missing"),
                    lambda: sn.remove("missing"),
                    lambda: sn.usage("missing"),
                    lambda: sn.update("missing", {}),
                    lambda: sn.commit("new", "missing"),
                    lambda: sn.prepare("new", "missing"),
                    lambda: sn.view("new", "missing"),
                ],
            ),
            (
                SnapshotExistsError,
                [
                    lambda: sn.prepare("active"),
                    lambda: sn.view("active"),
                    lambda: sn.prepare("committed"),
                    lambda: sn.commit("committed", "active"),
                ],
            ),
            (
                InvalidSnapshotError,
                [
                    lambda: sn.prepare("new", "active"),  # parents must be committed
                    lambda: sn.view("new", "view"),
                    lambda: sn.prepare(""),
                    lambda: sn.commit("", "active"),
                    lambda: sn.update("", {}),
                    lambda: sn.update("active", {}, ["parent"]),
                    lambda: sn.update("active", {}, ["kind"]),
                    lambda: sn.walk(["name=="]),
                ],
            ),
            (
                SnapshotPreconditionError,
                [
                    lambda: sn.commit("new", "view"),  # only active snapshots commit
                    lambda: sn.commit("new", "committed"),
                    lambda: sn.mounts("committed"),
                ],
            ),
        ]
        for error, calls in cases:
            for call in calls:
                with pytest.raises(error):
                    call()
        with pytest.raises(SnapshotPreconditionError, match="cannot remove"):
            sn.remove("committed")  # the view is its child
        # Nothing above changed anything.
        assert sorted(i.name for i in sn.walk()) == ["active", "committed", "view"]
        assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["1", "2", "3"]


@pytest.mark.timeout(10)
def test_remove_order_and_directories(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("a")
        sn.commit("base", "a")
        sn.prepare("b", "base")
        sn.commit("mid", "b")
        sn.prepare("top", "mid")
        for blocked in ("base", "mid"):
            with pytest.raises(SnapshotPreconditionError):
                sn.remove(blocked)
        sn.remove("top")
        assert not (tmp_path / "snapshots/3").exists()
        sn.remove("mid")
        sn.remove("base")
        assert list((tmp_path / "snapshots").iterdir()) == []


@pytest.mark.timeout(10)
def test_update_semantics(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("s", labels={"l1": "v1", "l2": "v2", "keep": "k"})
        created = sn.stat("s").created_ns
        info = sn.update("s", {"l1": "updated", "l4": "v4"}, ["labels.l1", "labels.l2"])
        assert info.labels == {"l1": "updated", "keep": "k"}  # l2 had no value: deleted
        assert info.created_ns == created < info.updated_ns
        assert sn.update("s", {"only": "this"}, ["labels"]).labels == {"only": "this"}
        assert sn.update("s", {"no": "mask"}).labels == {"no": "mask"}
        assert sn.stat("s").labels == {"no": "mask"}
        assert sn.stat("s").kind is Kind.ACTIVE


@pytest.mark.timeout(10)
def test_walk_filters_and_parent_names(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("a")
        sn.commit("p", "a", labels={"x": "1"})
        sn.prepare("child", "p")
        sn.view("v", "p", labels={"x": "2"})
        assert {i.name: i.parent for i in sn.walk()} == {"p": "", "child": "p", "v": "p"}
        assert sorted(i.name for i in sn.walk(["parent==p"])) == ["child", "v"]
        assert [i.name for i in sn.walk(["labels.x==1", "kind==view,labels.x==3"])] == ["p"]
        assert sorted(i.name for i in sn.walk(["kind==view", "kind==active"])) == ["child", "v"]


@pytest.mark.timeout(10)
def test_cleanup_removes_only_unowned_directories(tmp_path: Path) -> None:
    with Snapshotter(tmp_path) as sn:
        sn.prepare("a")
        stray = tmp_path / "snapshots" / "99"
        (stray / "fs" / "deep").mkdir(parents=True)
        temp = tmp_path / "snapshots" / "new-123"
        temp.mkdir()
        sn.cleanup()
        assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["1"]


@pytest.mark.timeout(20)
def test_concurrent_prepares_and_removes(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with Snapshotter(tmp_path) as sn:
        sn.prepare("base-a")
        sn.commit("base", "base-a")

        def work(n: int) -> None:
            try:
                for i in range(20):
                    key = f"w{n}-{i}"
                    sn.prepare(key, "base")
                    sn.stat(key)
                    sn.walk([f"name=={key}"])
                    sn.remove(key)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        sn.cleanup()
        for t in threads:
            t.join()
        assert errors == []
        assert [i.name for i in sn.walk()] == ["base"]
        assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["1"]


# -- remote layers --------------------------------------------------------------------------


def _layer_labels(target: str) -> dict[str, str]:
    return {
        LABEL_SNAPSHOT_REF: target,
        "containerd.io/snapshot/cri.layer-digest": "sha256:" + "1" * 64,
        "containerd.io/snapshot/stargz/toc.digest": "sha256:" + "2" * 64,
    }


@pytest.mark.timeout(10)
def test_remote_layer_is_committed_under_its_target(tmp_path: Path) -> None:
    remote = FakeRemote(tmp_path / "fuse")
    with Snapshotter(tmp_path / "state", remote) as sn:
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(SnapshotExistsError, match="target snapshot 'chain-1'"),
        ):
            sn.prepare("extract-1 chain-1", labels=_layer_labels("chain-1"))
        (event,) = [e for e in logs if e["event"] == "remote_snapshot"]
        assert event["remote_snapshot_prepared"] is True
        assert event["key"] == "extract-1 chain-1"
        with pytest.raises(SnapshotExistsError):
            sn.prepare("extract-2 chain-2", "chain-1", labels=_layer_labels("chain-2"))
        assert remote.calls == [("mount", "chain-1"), ("mount", "chain-2")]

        # containerd then finds the target with this exact filter and Stat.
        found = sn.walk(
            [f'labels."{LABEL_SNAPSHOT_REF}"==chain-2,parent=="chain-1"'],
        )
        assert [i.name for i in found] == ["chain-2"]
        info = sn.stat("chain-2")
        assert info.kind is Kind.COMMITTED and info.parent == "chain-1"
        assert info.labels == {**_layer_labels("chain-2"), REMOTE_LABEL: REMOTE_LABEL_VALUE}
        with pytest.raises(SnapshotNotFoundError):
            sn.stat("extract-2 chain-2")  # no active snapshot was left behind
        assert sn.usage("chain-2") == Usage(0, 0)

        # A container on top: an overlay whose lowerdirs are the remote directories.
        mounts = sn.prepare("container", "chain-2")
        (options,) = [m.options for m in mounts]
        assert options[-1] == f"lowerdir={remote.mounted['chain-2']}:{remote.mounted['chain-1']}"
        assert ("check", "chain-2") in remote.calls and ("check", "chain-1") in remote.calls

        # Asking for the same layer again (another image, another namespace) mounts nothing.
        remote.calls.clear()
        with pytest.raises(SnapshotExistsError):
            sn.prepare("extract-3 chain-1", labels=_layer_labels("chain-1"))
        assert remote.calls == []

        # Removal releases the layer once, top first.
        sn.remove("container")
        with pytest.raises(SnapshotPreconditionError):
            sn.remove("chain-1")
        sn.remove("chain-2")
        sn.remove("chain-1")
        assert remote.mounted == {}
        assert list((tmp_path / "state" / "snapshots").iterdir()) == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("remote_kwargs", "reason"),
    [({"accept": False}, "not eligible"), ({"fail": "bad TOC digest"}, "bad TOC digest")],
)
def test_remote_fallback_is_a_normal_snapshot(
    tmp_path: Path, remote_kwargs: dict[str, object], reason: str
) -> None:
    remote = FakeRemote(tmp_path / "fuse", **remote_kwargs)  # type: ignore[arg-type]
    with Snapshotter(tmp_path / "state", remote) as sn:
        with structlog.testing.capture_logs() as logs:
            mounts = sn.prepare("extract chain", labels=_layer_labels("chain"))
        (event,) = [e for e in logs if e["event"] == "remote_snapshot"]
        assert event["remote_snapshot_prepared"] is False
        assert event["target"] == "chain"
        assert reason in event["reason"]
        assert mounts[0].type == "bind"
        info = sn.stat("extract chain")
        assert info.kind is Kind.ACTIVE
        assert REMOTE_LABEL not in info.labels
        sn.commit("chain", "extract chain")  # as containerd does after applying the layer
        sn.remove("chain")
        assert remote.calls == [("mount", "chain")]  # never unmounted: it was never mounted


@pytest.mark.timeout(10)
def test_without_remote_or_target_label_prepare_is_normal(tmp_path: Path) -> None:
    with Snapshotter(tmp_path / "a") as sn:
        assert sn.prepare("k", labels=_layer_labels("chain"))[0].type == "bind"
    remote = FakeRemote(tmp_path / "fuse")
    with Snapshotter(tmp_path / "b", remote) as sn:
        assert sn.prepare("k", labels={"other": "label"})[0].type == "bind"
    assert remote.calls == []


@pytest.mark.timeout(10)
def test_remote_errors_before_mounting(tmp_path: Path) -> None:
    remote = FakeRemote(tmp_path / "fuse")
    with Snapshotter(tmp_path / "state", remote) as sn:
        with pytest.raises(SnapshotNotFoundError):
            sn.prepare("k", "missing-parent", labels=_layer_labels("chain"))
        sn.prepare("taken")
        with pytest.raises(SnapshotExistsError, match="'taken'"):
            sn.prepare("taken", labels=_layer_labels("chain"))
        # A snapshot of another kind holding the target name: fall back, mount nothing.
        sn.prepare("chain")
        assert sn.prepare("k2", labels=_layer_labels("chain"))[0].type == "bind"
        assert remote.calls == []


@pytest.mark.timeout(10)
def test_unavailable_remote_layer_fails_new_mounts_and_leaves_nothing(tmp_path: Path) -> None:
    remote = FakeRemote(tmp_path / "fuse")
    with Snapshotter(tmp_path / "state", remote) as sn:
        with pytest.raises(SnapshotExistsError):
            sn.prepare("x", labels=_layer_labels("chain"))
        sn.view("view", "chain")
        remote.unavailable.add("chain")
        with pytest.raises(SnapshotUnavailableError, match="registry unreachable"):
            sn.prepare("container", "chain")
        with pytest.raises(SnapshotUnavailableError):
            sn.mounts("view")
        assert sorted(i.name for i in sn.walk()) == ["chain", "view"]
        remote.unavailable.clear()
        assert sn.prepare("container", "chain")[0].type == "overlay"


@pytest.mark.timeout(10)
def test_restore_mounts_remote_layers_again(tmp_path: Path) -> None:
    first = FakeRemote(tmp_path / "fuse-1")
    with Snapshotter(tmp_path / "state", first) as sn:
        for n, parent in ((1, ""), (2, "chain-1"), (3, "chain-2")):
            with pytest.raises(SnapshotExistsError):
                sn.prepare(f"x{n}", parent, labels=_layer_labels(f"chain-{n}"))
        sn.prepare("local")

    # After a restart the FUSE mount is elsewhere and one layer cannot come back.
    second = FakeRemote(tmp_path / "fuse-2")
    original_mount = second.mount

    def flaky_mount(name: str, labels: Mapping[str, str]) -> Path | None:
        if name == "chain-2":
            raise OSError("blob gone")
        assert REMOTE_LABEL not in labels and labels[LABEL_SNAPSHOT_REF] == name
        return original_mount(name, labels)

    second.mount = flaky_mount  # type: ignore[method-assign]
    with Snapshotter(tmp_path / "state", second) as sn:
        assert sn.restore() == {"chain-2": "OSError: blob gone"}
        assert sorted(second.mounted) == ["chain-1", "chain-3"]
        second.unavailable.add("chain-2")
        with pytest.raises(SnapshotUnavailableError):
            sn.prepare("container", "chain-3")
        sn.view("ok", "chain-1")
        assert sn.mounts("ok") == [Mount("bind", str(second.mounted["chain-1"]), ("ro", "rbind"))]
