"""The holder leaving its pod's cgroups: ``leave_cgroups`` on a fake /proc and cgroup tree
(writing the real host's would move the test runner). It joins the target in the hierarchy
of each line of /proc/self/cgroup, through a mount of that whole hierarchy (never a mount of
a subtree, as a container's own are), and gives a new cpuset cgroup its parent's cpus and
mems at every level."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lazyimage.holder import leave_cgroups

pytestmark = pytest.mark.timeout(30)

POD = "/kubepods/besteffort/pod1234/abcd"
HIERARCHIES = {  # directory: super options
    "cpu,cpuacct": "rw,cpu,cpuacct",
    "cpuset": "rw,cpuset",
    "memory": "rw,memory",
    "systemd": "rw,xattr,name=systemd",
}
SELF_CGROUP = f"""\
9:name=systemd:{POD}
4:memory:{POD}
3:cpuset:{POD}
2:cpu,cpuacct:{POD}
0::{POD}
"""


def _fake_proc(tmp_path: Path, *, skip: str = "") -> tuple[Path, Path]:
    """/proc/self with a container's view: its own subtree mounted at /sys/fs/cgroup/memory,
    and the host's hierarchies under ``host`` (a hostPath volume)."""
    host = tmp_path / "host-cgroup"
    lines = [f"31 23 0:28 / {host} rw,relatime - tmpfs tmpfs rw,mode=755"]
    for number, (directory, options) in enumerate(HIERARCHIES.items()):
        (host / directory).mkdir(parents=True)
        if directory != skip:
            point = host / directory
            lines.append(f"{40 + number} 31 0:{30 + number} / {point} rw - cgroup cgroup {options}")
    (host / "unified").mkdir()
    lines.append(f"49 31 0:39 / {host / 'unified'} rw,relatime - cgroup2 cgroup2 rw")
    own = tmp_path / "own-memory"
    own.mkdir()
    lines.append(f"50 23 0:32 {POD} {own} ro,relatime - cgroup cgroup rw,memory")
    (host / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (host / "cpuset" / "cpuset.mems").write_text("0\n")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("".join(line + "\n" for line in lines))
    (proc / "self" / "cgroup").write_text(SELF_CGROUP)
    return proc, host


def _fake_kernel_cpuset(host: Path, target: str) -> None:
    """What the kernel makes in a new cpuset cgroup: empty cpus and mems files."""
    directory = host / "cpuset"
    for part in Path(target.strip("/")).parts:
        directory = directory / part
        directory.mkdir()
        for name in ("cpuset.cpus", "cpuset.mems"):
            (directory / name).write_text("\n")


def test_every_hierarchy_is_left_for_the_target(tmp_path: Path) -> None:
    proc, host = _fake_proc(tmp_path)
    _fake_kernel_cpuset(host, "/node/holder")
    moved = leave_cgroups("/node/holder", proc)
    assert moved == ["name=systemd", "memory", "cpuset", "cpu,cpuacct", "unified"]
    for hierarchy in ("cpu,cpuacct", "cpuset", "memory", "systemd", "unified"):
        procs = host / hierarchy / "node/holder/cgroup.procs"
        assert procs.read_text() == str(os.getpid()), hierarchy
    # Every level of the new cpuset cgroup got its parent's cpus and mems.
    for level in ("node", "node/holder"):
        assert (host / "cpuset" / level / "cpuset.cpus").read_text() == "0-1\n"
        assert (host / "cpuset" / level / "cpuset.mems").read_text() == "0\n"
    # The container's own mount of its subtree is never taken for the hierarchy.
    assert list((tmp_path / "own-memory").iterdir()) == []


def test_a_hierarchy_with_no_whole_mount_in_sight_is_skipped(tmp_path: Path) -> None:
    proc, host = _fake_proc(tmp_path, skip="memory")
    _fake_kernel_cpuset(host, "/holder")
    moved = leave_cgroups("/holder", proc)
    assert moved == ["name=systemd", "cpuset", "cpu,cpuacct", "unified"]
    assert not (host / "memory" / "holder").exists()
    assert list((tmp_path / "own-memory").iterdir()) == []


def test_a_target_it_cannot_make_is_an_error(tmp_path: Path) -> None:
    proc, host = _fake_proc(tmp_path)
    (host / "systemd" / "holder").write_text("a file where the cgroup would be")
    with pytest.raises(OSError):
        leave_cgroups("/holder", proc)
