"""Mount bookkeeping without FUSE traffic: mountinfo, forced unmounts, inode numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lazyimage.fusefs import force_unmount, inode, mounts_under, split
from lazyimage.fusefs._inodes import LayerSlots

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_force_unmount_finds_escaped_mountpoints_and_stacks(tmp_path: Path) -> None:
    target = tmp_path / "a dir\twith\\odd names"
    target.mkdir()
    try:
        for _ in range(2):  # two mounts stacked on one path
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
        assert [m.mountpoint for m in mounts_under(tmp_path)] == [str(target)] * 2
        assert {m.fstype for m in mounts_under(tmp_path)} == {"tmpfs"}
        assert force_unmount(tmp_path) == 2
    finally:
        force_unmount(tmp_path)
    assert mounts_under(tmp_path) == []
    assert force_unmount(tmp_path) == 0


def test_inode_numbers_pack_slot_and_node() -> None:
    assert inode(1, 0) == 1 << 32
    assert split(inode(7, 123)) == (7, 123)
    assert split(1) == (0, 1)  # the mount's root


def test_slots_are_never_reused() -> None:
    slots: LayerSlots[str] = LayerSlots()
    assert slots.add("a", "A").number == 1
    assert slots.add("b", "B").number == 2
    slots.remove("a")
    assert slots.add("a", "A2").number == 3
    assert [(s.number, s.name) for s in slots] == [(2, "b"), (3, "a")]
    assert slots.get(1) is None
    with pytest.raises(ValueError):
        slots.add("b", "again")
