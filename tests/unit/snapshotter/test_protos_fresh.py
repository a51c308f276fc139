"""The committed stubs are what scripts/gen-protos makes from the committed .proto files."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "nodeagent" / "lazyimage" / "snapshotter"


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.mark.timeout(120)
def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "gen-protos"), "--out", str(tmp_path)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=100,
    )
    fresh, committed = tmp_path / "_proto", PACKAGE / "_proto"
    assert _files(fresh) == _files(committed)
    stale = [f for f in _files(fresh) if not filecmp.cmp(fresh / f, committed / f, shallow=False)]
    assert stale == [], "run scripts/gen-protos and commit the result"


@pytest.mark.timeout(30)
def test_stubs_import_under_the_package_prefix() -> None:
    from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
        snapshots_pb2,
        snapshots_pb2_grpc,
    )
    from lazyimage.snapshotter._proto.cri.runtime.v1 import api_pb2, api_pb2_grpc

    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in service.methods] == [
        "Prepare",
        "View",
        "Mounts",
        "Commit",
        "Remove",
        "Stat",
        "Update",
        "List",
        "Usage",
        "Cleanup",
    ]
    assert snapshots_pb2.DESCRIPTOR.name.startswith("lazyimage/snapshotter/_proto/")
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    assert {"RuntimeService", "ImageService"} <= set(api_pb2.DESCRIPTOR.services_by_name)
    assert hasattr(snapshots_pb2_grpc, "SnapshotsStub")
    assert hasattr(api_pb2_grpc, "ImageServiceStub")
