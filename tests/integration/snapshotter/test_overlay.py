"""The service over real overlayfs mounts, driven through the generated stubs as containerd would:
layers are prepared, mounted, written, unmounted and committed; children, views and containers
see the layers below them; removal goes top down."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import grpc
import pytest
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)

from tests.integration.snapshotter.helpers import Mounter, Served, list_names


def _layer(
    served: Served,
    mounter: Mounter,
    work: Path,
    name: str,
    parent: str,
    files: dict[str, bytes | None],
) -> None:
    """Prepare, mount, write (None deletes), unmount and commit one layer."""
    key = f"extract {name}"
    mounts = served.stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent)).mounts
    target = mounter.mount(mounts, work / key.replace(" ", "-"))
    for rel, data in files.items():
        path = target / rel
        if data is None:
            os.unlink(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    mounter.unmount(target)
    served.stub.Commit(pb.CommitSnapshotRequest(name=name, key=key))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.timeout(60)
def test_layers_stack_in_children_views_and_containers(
    served: Served, mounter: Mounter, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    _layer(served, mounter, work, "l1", "", {"a.txt": b"one", "dir/x": b"x", "keep": b"k"})
    _layer(served, mounter, work, "l2", "l1", {"a.txt": b"two", "b.txt": b"b", "dir/x": None})
    assert _tree(served.root / "snapshots/1/fs") == {"a.txt": b"one", "dir/x": b"x", "keep": b"k"}
    # The second layer's directory holds only its changes, with overlayfs' whiteout for dir/x.
    upper = served.root / "snapshots/2/fs"
    assert _tree(upper) == {"a.txt": b"two", "b.txt": b"b"}
    whiteout = os.stat(upper / "dir/x", follow_symlinks=False)
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0

    expected = {"a.txt": b"two", "b.txt": b"b", "keep": b"k"}
    view = served.stub.View(pb.ViewSnapshotRequest(key="view", parent="l2")).mounts
    assert [m.type for m in view] == ["overlay"]
    target = mounter.mount(view, work / "view")
    assert _tree(target) == expected
    with pytest.raises(OSError) as info:
        (target / "new").write_bytes(b"no")
    assert info.value.errno == errno.EROFS
    mounter.unmount(target)

    container = served.stub.Prepare(pb.PrepareSnapshotRequest(key="container", parent="l2"))
    assert served.stub.Mounts(pb.MountsRequest(key="container")).mounts == container.mounts
    target = mounter.mount(container.mounts, work / "rootfs")
    assert _tree(target) == expected
    (target / "written-by-container").write_bytes(b"c")
    (target / "keep").unlink()
    mounter.unmount(target)
    assert _tree(served.root / "snapshots/1/fs")["keep"] == b"k"  # lower layers never change
    assert "written-by-container" in _tree(served.root / "snapshots/4/fs")

    usage = served.stub.Usage(pb.UsageRequest(key="container"))
    assert usage.inodes >= 2
    infos = list_names(served.stub)
    assert {n: (i.kind, i.parent) for n, i in infos.items()} == {
        "l1": (pb.COMMITTED, ""),
        "l2": (pb.COMMITTED, "l1"),
        "view": (pb.VIEW, "l2"),
        "container": (pb.ACTIVE, "l2"),
    }

    # Removal goes from the top: a parent goes only once its children are gone.
    for key in ("l1", "l2"):
        with pytest.raises(grpc.RpcError) as rpc:
            served.stub.Remove(pb.RemoveSnapshotRequest(key=key))
        assert rpc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for key in ("container", "view", "l2", "l1"):
        served.stub.Remove(pb.RemoveSnapshotRequest(key=key))
    assert list_names(served.stub) == {}
    assert list((served.root / "snapshots").iterdir()) == []


@pytest.mark.timeout(60)
def test_single_layer_binds(served: Served, mounter: Mounter, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _layer(served, mounter, work, "base", "", {"etc/hostname": b"lazy\n"})
    # A view of one committed layer is a read-only bind of it.
    view = served.stub.View(pb.ViewSnapshotRequest(key="v", parent="base")).mounts
    assert [(m.type, list(m.options)) for m in view] == [("bind", ["ro", "rbind"])]
    target = mounter.mount(view, work / "v")
    assert (target / "etc/hostname").read_bytes() == b"lazy\n"
    with pytest.raises(OSError):
        (target / "etc/other").write_bytes(b"x")
    mounter.unmount(target)
    # An empty view with no parent is an empty read-only directory.
    empty = served.stub.View(pb.ViewSnapshotRequest(key="empty")).mounts
    target = mounter.mount(empty, work / "empty")
    assert list(target.iterdir()) == []
    mounter.unmount(target)
