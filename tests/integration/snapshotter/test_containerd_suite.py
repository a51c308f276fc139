"""containerd's own snapshotter test suite (snapshots/testsuite of github.com/containerd/containerd
v1.7.35) against our service, through containerd's proxy snapshotter client.

The suite is a Go test binary (tests/goref/snapshotter-suite, built by scripts/build-go-tools);
each of its cases starts ``python -m lazyimage.snapshotter`` on a fresh root and stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.gotools import go_tool

REPO = Path(__file__).resolve().parents[3]
# Every case of SnapshotterSuite at v1.7.35; a new containerd version may add some.
CASES = {
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "Rename",
    "128LayersMount",
}
_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): TestSnapshotterSuite/(\S+)")


@pytest.mark.integration
@pytest.mark.timeout(1800)  # a cold build of the suite downloads containerd's modules first
def test_containerd_snapshotter_suite_passes() -> None:
    binary = go_tool("snapshotter-suite.test")
    # The suite makes its directories under TMPDIR and our sockets go beside them: keep the
    # paths short (unix socket paths are limited to 107 bytes).
    tmp = tempfile.mkdtemp(prefix="lzsuite-", dir="/tmp")
    env = {
        **os.environ,
        "TMPDIR": tmp,
        "LAZYIMAGE_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO / "nodeagent"),
    }
    try:
        proc = subprocess.run(
            [str(binary), "-test.v", "-test.timeout", "15m", "-test.run", "^TestSnapshotterSuite$"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1000,
            check=False,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    output = proc.stdout + proc.stderr
    results = {m.group(2): m.group(1) for m in map(_RESULT.match, output.splitlines()) if m}
    failed = sorted(name for name, result in results.items() if result != "PASS")
    assert failed == [], f"suite cases not passing: {failed}\n{output[-6000:]}"
    assert set(results) == CASES, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    assert output.rstrip().endswith("PASS"), output[-3000:]
