"""Layers come and go while others are read; dead and hung servers are cleaned up."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from lazyimage.fusefs import FUSECTL

from tests.integration.fusefs.harness import Mounts
from tests.integration.fusefs.layers import build_layer, small_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def blobs(tmp_path: Path) -> list[Path]:
    return [
        build_layer(small_files(200, per_dir=100), tmp_path / "a.esgz"),
        build_layer(small_files(300, size=100, per_dir=150), tmp_path / "b.esgz"),
    ]


def _read_tree(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                total += len(f.read())
    return total


def test_root_lists_layers_with_dot_entries_and_statfs(mounts: Mounts, blobs: list[Path]) -> None:
    server = mounts.server()
    a = server.add("a", blobs[0])
    b = server.add("b", blobs[1])
    assert sorted(os.listdir(server.mountpoint)) == ["a", "b"]
    listing = subprocess.run(["ls", "-a", str(a)], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == [".", "..", "d000", "d001"]
    assert os.stat(server.mountpoint).st_nlink == 4
    st = os.statvfs(b)
    assert st.f_bsize == 4096 and st.f_namemax == 255
    assert st.f_files > 500
    assert os.stat(a).st_ino >> 32 == 1 and os.stat(b).st_ino >> 32 == 2
    assert os.stat(a / "d000").st_nlink == 2


def test_layers_are_added_and_removed_while_another_is_read(
    mounts: Mounts, blobs: list[Path]
) -> None:
    server = mounts.server()
    a = server.add("a", blobs[0])
    results: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(5):
                results.append(_read_tree(a))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for round_ in range(5):
        b = server.add(f"b{round_}", blobs[1])
        assert _read_tree(b) == 300 * 100
        server.remove(f"b{round_}")
        with pytest.raises(FileNotFoundError):
            os.stat(b)
    thread.join(60)
    assert not errors, errors
    assert results == [200 * 4096] * 5
    assert os.listdir(server.mountpoint) == ["a"]
    # a new layer under an old name gets a new slot, never the removed layer's inodes
    again = server.add("b0", blobs[1])
    assert os.stat(again).st_ino >> 32 == 7


def test_a_killed_server_is_aborted_and_unmounted(mounts: Mounts, blobs: list[Path]) -> None:
    server = mounts.server()
    a = server.add("a", blobs[0])
    merged = mounts.overlay([a], writable=True)
    assert _read_tree(merged) == 200 * 4096
    connection = FUSECTL / str(server.connection)

    server.kill(signal.SIGKILL)
    with pytest.raises(OSError) as raised:
        os.listdir(a / "d000")  # cached attributes still answer; a listing needs the server
    assert raised.value.errno == errno.ENOTCONN
    assert len(mounts.mounted()) == 2  # the overlay and the dead FUSE mount

    assert mounts.cleanup() == 1  # the FUSE mount had to be forced off
    assert mounts.mounted() == []
    assert not connection.exists()


def test_a_hung_server_is_aborted_without_blocking(mounts: Mounts, blobs: list[Path]) -> None:
    server = mounts.server()
    a = server.add("a", blobs[0])
    merged = mounts.overlay([a], writable=True)
    server.kill(signal.SIGSTOP)  # alive, holding /dev/fuse, answering nothing
    try:
        forced = mounts.cleanup_forced()
    finally:
        server.kill(signal.SIGKILL)
    assert forced == 2
    assert mounts.mounted() == []
    assert not merged.is_mount()


def test_a_new_server_replaces_a_dead_mount(mounts: Mounts, blobs: list[Path]) -> None:
    first = mounts.server()
    first.add("a", blobs[0])
    first.kill(signal.SIGKILL)
    second = mounts.server(mountpoint=first.mountpoint)  # finds the dead mount, removes it
    a = second.add("a", blobs[0])
    assert _read_tree(a) == 200 * 4096
    assert len(mounts.mounted()) == 1
