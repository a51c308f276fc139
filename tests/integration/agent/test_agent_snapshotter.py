"""The agent's snapshotter socket driven as containerd's unpacker drives it: a Prepare with
the layer's labels is mounted lazily, committed remotely and answered ALREADY_EXISTS; a
container snapshot on top mounts as an overlay of the lazy layers."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from lazyimage import names
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2_grpc as pb_grpc,
)

from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _prepare_layers(stub: pb_grpc.SnapshotsStub, image: RemoteImage) -> list[str]:
    """Prepare each layer with containerd's labels; return the committed chain names."""
    chain: list[str] = []
    for index, layer in enumerate(image.layers):
        name = f"chain-{index}"
        labels = {
            names.LABEL_SNAPSHOT_REF: name,
            names.LABEL_CRI_IMAGE_REF: image.ref,
            names.LABEL_CRI_LAYER_DIGEST: layer.digest,
            names.TOC_DIGEST_ANNOTATION: image.toc(layer),
        }
        request = pb.PrepareSnapshotRequest(
            snapshotter="lazyimage",
            key=f"extract-{index} {name}",
            parent=chain[-1] if chain else "",
            labels=labels,
        )
        with pytest.raises(grpc.RpcError) as answer:
            stub.Prepare(request)
        assert answer.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = stub.Stat(pb.StatSnapshotRequest(snapshotter="lazyimage", key=name)).info
        assert info.kind == pb.COMMITTED
        assert info.parent == (chain[-1] if chain else "")
        chain.append(name)
    return chain


def _mount(stub: pb_grpc.SnapshotsStub, key: str, parent: str, target: Path) -> Path:
    mounts = stub.Prepare(
        pb.PrepareSnapshotRequest(snapshotter="lazyimage", key=key, parent=parent)
    ).mounts
    target.mkdir(parents=True)
    for m in mounts:
        subprocess.run(
            ["mount", "-t", m.type, "-o", ",".join(m.options), m.source, str(target)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return target


def test_remote_layers_through_the_snapshotter_socket(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    socket = agent.base / "run" / "snapshotter.sock"
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        chain = _prepare_layers(stub, image)
        rootfs = _mount(stub, "container-1", chain[-1], tmp_path / "rootfs")
        done = subprocess.run(
            ["chroot", str(rootfs), "/usr/bin/python3", "-c", PYTHON_PROBE_CODE],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == PYTHON_PROBE_OUTPUT
        (rootfs / "written-by-the-container").write_text("upper")  # the upper dir is local
        subprocess.run(["umount", str(rootfs)], check=True, timeout=30)

        remote = [
            v for k, v in agent.metrics().items()
            if k.startswith("lazyimage_snapshot_prepares_total{") and 'result="remote"' in k
        ]  # fmt: skip
        assert sum(remote) == len(image.layers)
        assert len(agent.request("GET", "/v1/layers")) == len(image.layers)

        # containerd's garbage collector removes leaf-first; the layers are then released.
        stub.Remove(pb.RemoveSnapshotRequest(snapshotter="lazyimage", key="container-1"))
        for name in reversed(chain):
            stub.Remove(pb.RemoveSnapshotRequest(snapshotter="lazyimage", key=name))
        assert agent.request("GET", "/v1/layers") == []


def test_a_layer_without_a_toc_digest_falls_back(
    registry: RegistryServer, agent_factory: Any
) -> None:
    agent = agent_factory([registry.host])
    socket = agent.base / "run" / "snapshotter.sock"
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        labels = {names.LABEL_SNAPSHOT_REF: "chain-gzip"}
        mounts = stub.Prepare(
            pb.PrepareSnapshotRequest(snapshotter="lazyimage", key="extract-0", labels=labels)
        ).mounts
        assert mounts  # a normal snapshot for containerd to fill
    fallbacks = [
        e for e in agent.log_events()
        if e.get("event") == "remote_snapshot" and e.get("remote_snapshot_prepared") is False
    ]  # fmt: skip
    assert fallbacks and "not-estargz" in fallbacks[0].get("reason", "")


def test_remote_snapshots_come_back_after_a_restart(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    state = tmp_path / "state"
    first = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    socket = first.base / "run" / "snapshotter.sock"
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        chain = _prepare_layers(pb_grpc.SnapshotsStub(channel), image)
    first.kill()  # no clean shutdown: the FUSE mount is left dead

    second = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    assert len(second.request("GET", "/v1/layers")) == len(image.layers)
    socket = second.base / "run" / "snapshotter.sock"
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        rootfs = _mount(stub, "container-2", chain[-1], tmp_path / "rootfs")
        assert (rootfs / "usr/lib/python3.11/json/__init__.py").read_bytes().startswith(b'r"""')
        subprocess.run(["umount", str(rootfs)], check=True, timeout=30)
