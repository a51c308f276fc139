"""Debian's containerd 1.6 using our service as its proxy snapshotter ``lazyimage``: ctr's
snapshot commands, unpacking an image, running a container on it, and containerd's garbage
collector removing what it no longer references through our List and Remove."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lazyimage.names import SNAPSHOTTER_NAME
from lazyimage.snapshotter._proto.containerd.types import mount_pb2

from tests.fixtures.containerd import ContainerdServer
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.integration.snapshotter.helpers import Mounter, Served, list_names

NAMESPACE = "lz"


@dataclass
class Containerd:
    server: ContainerdServer

    def ctr(self, *args: str, timeout: float = 60) -> str:
        cmd = ["ctr", "--address", str(self.server.socket), "-n", NAMESPACE, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def snapshots(self, *args: str) -> str:
        return self.ctr("snapshots", "--snapshotter", SNAPSHOTTER_NAME, *args)

    def collect_garbage(self) -> None:
        """Run a full collection and wait for it. Deleting a lease with --sync is the one
        ctr command that does; its request is stamped after any collection in progress."""
        lease = self.ctr("leases", "create").split()[0]
        self.ctr("leases", "rm", "--sync", lease)

    def log_problems(self) -> list[str]:
        """Errors, and warnings about our snapshotter or GC, from containerd's log. (GC logs
        "garbage collection failed" when a Remove answers anything but FAILED_PRECONDITION,
        and a warning for each snapshot it could not remove.)"""
        lines = self.server.log_path.read_text().splitlines()
        return [
            line
            for line in lines
            if "level=error" in line
            or (
                "level=warn" in line
                and any(w in line for w in (SNAPSHOTTER_NAME, "garbage", "remove snapshot"))
            )
        ]


@pytest.fixture
def containerd(served: Served, tmp_path: Path) -> Iterator[Containerd]:
    config = f"""
[proxy_plugins]
  [proxy_plugins.{SNAPSHOTTER_NAME}]
    type = "snapshot"
    address = "{served.socket}"
# Collect garbage after every deletion, so the tests see the backend emptied promptly.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"
"""
    with ContainerdServer(tmp_path / "containerd", config) as server:
        yield Containerd(server)


def _wait_until_empty(served: Served, timeout: float = 20) -> list[str]:
    """Wait for GC to remove every snapshot (records and directories); returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        # A record goes before its directory: Remove deletes the files after the transaction.
        left = [*list_names(served.stub), *(p.name for p in (served.root / "snapshots").iterdir())]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_ctr_snapshot_commands_and_gc(
    containerd: Containerd, served: Served, mounter: Mounter, tmp_path: Path
) -> None:
    mounts = json.loads(containerd.snapshots("prepare", "--mounts", "layer-1"))
    assert [m["Type"] for m in mounts] == ["bind"]
    target = mounter.mount(
        [mount_pb2.Mount(type=m["Type"], source=m["Source"], options=m["Options"]) for m in mounts],
        tmp_path / "mnt",
    )
    (target / "hello").write_text("from a layer\n")
    mounter.unmount(target)
    containerd.snapshots("commit", "base", "layer-1")

    mounts = json.loads(containerd.snapshots("prepare", "--mounts", "work", "base"))
    assert [m["Type"] for m in mounts] == ["overlay"]
    target = mounter.mount(
        [mount_pb2.Mount(type=m["Type"], source=m["Source"], options=m["Options"]) for m in mounts],
        tmp_path / "mnt",
    )
    assert (target / "hello").read_text() == "from a layer\n"
    mounter.unmount(target)

    listing = containerd.snapshots("ls")
    assert "base" in listing and "work" in listing
    assert json.loads(containerd.snapshots("info", "base"))["Kind"] == "Committed"
    containerd.snapshots("label", "base", "example=1")
    assert "work" in containerd.snapshots("usage")

    # containerd names our snapshots <namespace>/<seq>/<key>; parents by their backend names.
    ours = list_names(served.stub)
    assert len(ours) == 2
    (base_name,) = [n for n in ours if n.endswith("/base")]
    (work_name,) = [n for n in ours if n.endswith("/work")]
    assert ours[work_name].parent == base_name

    containerd.snapshots("rm", "work")
    containerd.snapshots("rm", "base")
    # The scheduler drops a deletion that arrives while a collection runs, if the collection
    # ends after it: "base" may then wait for the next deletion. Ask for one.
    containerd.collect_garbage()
    assert _wait_until_empty(served) == []
    assert containerd.log_problems() == []


@pytest.mark.integration
@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_unpack_container_run_and_gc(
    containerd: Containerd, served: Served, busybox_image: TestImage, tmp_path: Path
) -> None:
    archive = tmp_path / "busybox.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(busybox_image.layout.iterdir()):
            tar.add(entry, arcname=entry.name)
    image = "test.local/busybox:latest"
    containerd.ctr(
        "images", "import", "--base-name", "test.local/busybox",
        "--snapshotter", SNAPSHOTTER_NAME, str(archive),
    )  # fmt: skip

    # Unpacking went through our Prepare / Commit: one committed snapshot per layer, chained.
    committed = {n: i for n, i in list_names(served.stub).items()}
    assert len(committed) == len(busybox_image.layers)
    assert sum(1 for i in committed.values() if not i.parent) == 1

    try:
        out = containerd.ctr(
            "run", "--rm", "--snapshotter", SNAPSHOTTER_NAME, image, "probe",
            "/bin/busybox", "sh", "-c", "echo written > /tmp/x && cat /tmp/x && ls /",
            timeout=120,
        )  # fmt: skip
    finally:
        subprocess.run(
            ["ctr", "--address", str(containerd.server.socket), "-n", NAMESPACE,
             "containers", "rm", "probe"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    lines = out.split()
    assert lines[0] == "written"
    assert {"bin", "etc", "tmp"} <= set(lines[1:])

    containerd.ctr("images", "rm", "--sync", image)
    assert _wait_until_empty(served) == []
    assert containerd.log_problems() == []
