"""The FUSE connection holder, as a real process: it keeps what is deposited, hands copies
back, and exits when the held descriptor's far end is gone. A pipe stands in for
``/dev/fuse`` here (its read end polls POLLHUP once the write end closes, as the FUSE
device polls POLLERR once its connection ends); the real device is held in
tests/integration/cri/test_cri_takeover.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lazyimage import holder

pytestmark = pytest.mark.timeout(60)


def _wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A child of ours: reap it, or it stays a zombie that kill(0) still finds.
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        assert time.monotonic() < deadline, f"holder {pid} is still running"
        time.sleep(0.05)


def test_a_deposit_is_handed_back_and_the_holder_ends_with_the_connection(
    tmp_path: Path,
) -> None:
    # A long path: the socket is reached through /proc/self/fd, past sun_path's 108 bytes.
    socket_path = tmp_path / ("d" * 120) / "holder.sock"
    assert holder.take(socket_path) is None  # nobody there
    read_end, write_end = os.pipe()
    pid = holder.deposit(socket_path, read_end, {"mountpoint": "/m", "init": "aGk="})
    os.close(read_end)  # the holder keeps its own copy
    assert oct(socket_path.stat().st_mode & 0o777) == "0o600"
    assert holder.ensure_running(socket_path) == pid  # one holder, not a second

    held = holder.take(socket_path)
    assert held is not None and held.meta == {"mountpoint": "/m", "init": "aGk="}
    os.write(write_end, b"through the copy")
    assert os.read(held.fd, 100) == b"through the copy"
    os.close(held.fd)

    os.close(write_end)  # the "connection" ends
    _wait_gone(pid)
    assert not socket_path.exists()
    assert holder.take(socket_path) is None


def test_a_holder_given_nothing_exits_and_can_be_told_to(tmp_path: Path) -> None:
    socket_path = tmp_path / "holder.sock"
    started = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from lazyimage import holder;"
         f" sys.exit(holder.serve(Path({str(socket_path)!r}), idle_exit=0.5))"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert started.wait(timeout=30) == 0  # nothing deposited: it left by itself

    pid = holder.ensure_running(socket_path)
    assert holder.stop(socket_path) is True
    _wait_gone(pid)
    assert holder.stop(socket_path) is False
