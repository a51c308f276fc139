"""A served snapshotter and a mount owner that always leaves the machine without mounts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from lazyimage.snapshotter import RemoteFS, Snapshotter, serve
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2_grpc as pb_grpc,
)
from lazyimage.snapshotter._proto.containerd.types import mount_pb2

__all__ = ["Mounter", "Served", "list_names", "served_snapshotter"]


@dataclass
class Served:
    stub: pb_grpc.SnapshotsStub
    root: Path
    socket: Path


@contextmanager
def served_snapshotter(
    root: Path, socket: Path, remote: RemoteFS | None = None
) -> Iterator[Served]:
    with Snapshotter(root, remote) as sn:
        server = serve(sn, socket)
        try:
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                yield Served(pb_grpc.SnapshotsStub(channel), root, socket)
        finally:
            server.stop()


def list_names(stub: pb_grpc.SnapshotsStub, *filters: str) -> dict[str, pb.Info]:
    return {
        info.name: info
        for batch in stub.List(pb.ListSnapshotsRequest(filters=list(filters)))
        for info in batch.info
    }


class Mounter:
    """Mounts what a snapshotter answered with mount(8), as containerd would with mount(2),
    and unmounts everything it mounted, newest first."""

    def __init__(self) -> None:
        self._targets: list[Path] = []

    def mount(self, mounts: Sequence[mount_pb2.Mount], target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        for m in mounts:
            cmd = ["mount", "-t", m.type, "-o", ",".join(m.options), m.source, str(target)]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
            self._targets.append(target)
        return target

    def unmount(self, target: Path) -> None:
        subprocess.run(["umount", str(target)], check=True, timeout=30)
        self._targets.reverse()
        self._targets.remove(target)
        self._targets.reverse()

    def unmount_all(self) -> list[str]:
        """Unmount what is left; returns the targets that needed a lazy unmount."""
        stuck = []
        while self._targets:
            target = self._targets.pop()
            if subprocess.run(["umount", str(target)], timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], timeout=30)
                stuck.append(str(target))
        return stuck
