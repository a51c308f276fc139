"""The gRPC service on a real unix socket, driven by the generated stubs: status codes for each
error case, List batching and filters, Update masks, times, and the socket's lifecycle."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from lazyimage.names import LABEL_SNAPSHOT_REF
from lazyimage.snapshotter import MAX_LABEL_SIZE, REMOTE_LABEL, Snapshotter, serve
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2_grpc as pb_grpc,
)

from tests.unit.snapshotter.helpers import FakeRemote

Code = grpc.StatusCode


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[pb_grpc.SnapshotsStub]:
    remote = FakeRemote(tmp_path / "fuse")
    with Snapshotter(tmp_path / "root", remote) as sn:
        server = serve(sn, tmp_path / "snap.sock")
        try:
            with grpc.insecure_channel(f"unix://{tmp_path / 'snap.sock'}") as channel:
                yield pb_grpc.SnapshotsStub(channel)
        finally:
            server.stop()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        assert callable(call)
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code()


@pytest.mark.timeout(20)
def test_status_codes_for_each_error(stub: pb_grpc.SnapshotsStub) -> None:
    stub.Prepare(pb.PrepareSnapshotRequest(snapshotter="lazyimage", key="active"))
    stub.Prepare(pb.PrepareSnapshotRequest(key="a2"))
    stub.Commit(pb.CommitSnapshotRequest(name="committed", key="a2"))
    stub.View(pb.ViewSnapshotRequest(key="view", parent="committed"))

    cases = {
        # NOT_FOUND
        "stat missing": (lambda: stub.Stat(pb.StatSnapshotRequest(key="nope")), Code.NOT_FOUND),
        "mounts missing": (lambda: stub.Mounts(pb.MountsRequest(key="nope")), Code.NOT_FOUND),
        "remove missing": (
            lambda: stub.Remove(pb.RemoveSnapshotRequest(key="nope")),
            Code.NOT_FOUND,
        ),
        "usage missing": (lambda: stub.Usage(pb.UsageRequest(key="nope")), Code.NOT_FOUND),
        "commit missing": (
            lambda: stub.Commit(pb.CommitSnapshotRequest(name="n", key="nope")),
            Code.NOT_FOUND,
        ),
        "parent missing": (
            lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="n", parent="nope")),
            Code.NOT_FOUND,
        ),
        "update missing": (
            lambda: stub.Update(pb.UpdateSnapshotRequest(info=pb.Info(name="nope"))),
            Code.NOT_FOUND,
        ),
        # ALREADY_EXISTS
        "prepare twice": (
            lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="active")),
            Code.ALREADY_EXISTS,
        ),
        "view over a key": (
            lambda: stub.View(pb.ViewSnapshotRequest(key="active")),
            Code.ALREADY_EXISTS,
        ),
        "commit onto a name": (
            lambda: stub.Commit(pb.CommitSnapshotRequest(name="committed", key="active")),
            Code.ALREADY_EXISTS,
        ),
        # FAILED_PRECONDITION
        "remove with child": (
            lambda: stub.Remove(pb.RemoveSnapshotRequest(key="committed")),
            Code.FAILED_PRECONDITION,
        ),
        "commit a view": (
            lambda: stub.Commit(pb.CommitSnapshotRequest(name="n", key="view")),
            Code.FAILED_PRECONDITION,
        ),
        "commit committed": (
            lambda: stub.Commit(pb.CommitSnapshotRequest(name="n", key="committed")),
            Code.FAILED_PRECONDITION,
        ),
        "mounts of committed": (
            lambda: stub.Mounts(pb.MountsRequest(key="committed")),
            Code.FAILED_PRECONDITION,
        ),
        # INVALID_ARGUMENT
        "parent not committed": (
            lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="n", parent="active")),
            Code.INVALID_ARGUMENT,
        ),
        "empty key": (
            lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="")),
            Code.INVALID_ARGUMENT,
        ),
        "label too long": (
            lambda: stub.Prepare(
                pb.PrepareSnapshotRequest(key="n", labels={"k": "v" * MAX_LABEL_SIZE})
            ),
            Code.INVALID_ARGUMENT,
        ),
        "immutable field": (
            lambda: stub.Update(
                pb.UpdateSnapshotRequest(
                    info=pb.Info(name="active", parent="x"),
                    update_mask=field_mask_pb2.FieldMask(paths=["parent"]),
                )
            ),
            Code.INVALID_ARGUMENT,
        ),
        "bad filter": (
            lambda: list(stub.List(pb.ListSnapshotsRequest(filters=["name=="]))),
            Code.INVALID_ARGUMENT,
        ),
    }
    got = {name: _code(call) for name, (call, _) in cases.items()}
    assert got == {name: code for name, (_, code) in cases.items()}


@pytest.mark.timeout(20)
def test_remote_prepare_answers_already_exists(stub: pb_grpc.SnapshotsStub) -> None:
    labels = {LABEL_SNAPSHOT_REF: "sha256:chain"}
    request = pb.PrepareSnapshotRequest(key="ns/1/extract sha256:chain", labels=labels)
    assert _code(lambda: stub.Prepare(request)) == Code.ALREADY_EXISTS
    (response,) = stub.List(
        pb.ListSnapshotsRequest(filters=[f'labels."{LABEL_SNAPSHOT_REF}"==sha256:chain,parent==""'])
    )
    (info,) = response.info
    assert info.name == "sha256:chain" and info.kind == pb.COMMITTED
    assert info.labels[REMOTE_LABEL]


@pytest.mark.timeout(30)
def test_list_streams_batches_of_100_and_filters(stub: pb_grpc.SnapshotsStub) -> None:
    for n in range(250):
        labels = {"even": "yes"} if n % 2 == 0 else {}
        stub.View(pb.ViewSnapshotRequest(key=f"v{n:03d}", labels=labels))
    batches = list(stub.List(pb.ListSnapshotsRequest()))
    assert [len(b.info) for b in batches] == [100, 100, 50]
    assert sorted(i.name for b in batches for i in b.info) == [f"v{n:03d}" for n in range(250)]
    even = [
        i.name for b in stub.List(pb.ListSnapshotsRequest(filters=["labels.even"])) for i in b.info
    ]
    assert len(even) == 125
    two = stub.List(pb.ListSnapshotsRequest(filters=["name==v001", "name==v002"]))
    assert sorted(i.name for b in two for i in b.info) == ["v001", "v002"]
    assert list(stub.List(pb.ListSnapshotsRequest(filters=["name==none"]))) == []


@pytest.mark.timeout(20)
def test_info_times_usage_update_and_cleanup(stub: pb_grpc.SnapshotsStub) -> None:
    mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="a", labels={"x": "1"})).mounts
    assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rw", "rbind"])]
    Path(mounts[0].source, "file").write_bytes(b"z" * 5000)
    usage = stub.Usage(pb.UsageRequest(key="a"))
    assert usage.inodes == 2 and usage.size >= 5000

    info = stub.Stat(pb.StatSnapshotRequest(key="a")).info
    assert info.kind == pb.ACTIVE and dict(info.labels) == {"x": "1"}
    assert info.created_at == info.updated_at and info.created_at.seconds > 1_600_000_000

    updated = stub.Update(
        pb.UpdateSnapshotRequest(
            info=pb.Info(name="a", labels={"x": "", "y": "2"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.x", "labels.y"]),
        )
    ).info
    assert dict(updated.labels) == {"y": "2"}
    assert updated.created_at == info.created_at
    assert updated.updated_at.ToNanoseconds() > info.updated_at.ToNanoseconds()
    no_mask = stub.Update(pb.UpdateSnapshotRequest(info=pb.Info(name="a", labels={"z": "3"})))
    assert dict(no_mask.info.labels) == {"z": "3"}

    stub.Commit(pb.CommitSnapshotRequest(name="c", key="a", labels={"c": "1"}))
    assert stub.Usage(pb.UsageRequest(key="c")) == usage
    stub.Cleanup(pb.CleanupRequest())
    stub.Remove(pb.RemoveSnapshotRequest(key="c"))
    assert list(stub.List(pb.ListSnapshotsRequest())) == []


@pytest.mark.timeout(20)
def test_socket_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "run" / "snap.sock"
    path.parent.mkdir()
    # A stale socket from a killed agent is replaced.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    with Snapshotter(tmp_path / "root") as sn:
        server = serve(sn, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with grpc.insecure_channel(f"unix://{path}") as channel:
            pb_grpc.SnapshotsStub(channel).List(pb.ListSnapshotsRequest())
        server.stop()
        assert not path.exists()
        assert server.wait(0)

        # Anything that is not a socket is left alone, and serving there fails.
        path.write_text("not a socket")
        with pytest.raises((OSError, RuntimeError)):
            serve(sn, path)
        assert path.read_text() == "not a socket"
