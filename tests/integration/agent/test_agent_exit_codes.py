"""The real agent refuses bad input and a hostile system with a message and an exit code
(README, "The node agent"), never a traceback, and leaves no mount behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lazyimage.fusefs import force_unmount, mounts_under

from tests.fixtures.registry import RegistryServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Ended:
    code: int
    err: str


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Any]:
    """``run_agent(*flags, env=...)`` runs an agent that is expected to stop by itself."""

    def run(*flags: str, env: dict[str, str] | None = None) -> Ended:
        args = [
            sys.executable, "-m", "lazyimage.agent.main",
            "--state-dir", str(tmp_path / "state"),
            "--socket", str(tmp_path / "run" / "snapshotter.sock"),
            *flags,
        ]  # fmt: skip
        if not any(flag == "--listen" for flag in flags):
            args += ["--listen", f"127.0.0.1:{free_port()}"]
        pythonpath = f"{_REPO / 'nodeagent'}{os.pathsep}{_REPO}"
        done = subprocess.run(
            args,
            env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Ended(done.returncode, done.stderr)

    try:
        yield run
    finally:
        force_unmount(tmp_path)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def test_a_bad_variable_stops_it_before_it_starts(run_agent: Any, tmp_path: Path) -> None:
    ended = run_agent(env={"LAZYIMAGE_CACHE_SIZE": "lots"})
    assert ended.code == 2
    assert "LAZYIMAGE_CACHE_SIZE='lots': not a whole number" in ended.err
    _no_traceback(ended.err)
    assert not (tmp_path / "state").exists()  # nothing was done


def test_a_bad_flag(run_agent: Any) -> None:
    ended = run_agent("--prefetch-bandwidth", "fast")
    assert ended.code == 2
    assert "--prefetch-bandwidth: not a whole number" in ended.err
    _no_traceback(ended.err)


def test_a_port_in_use(run_agent: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ended = run_agent("--listen", f"127.0.0.1:{port}")
    assert ended.code == 7
    assert '"event": "agent_failed"' in ended.err and "Address already in use" in ended.err
    _no_traceback(ended.err)
    assert mounts_under(tmp_path) == []  # the FUSE mount made before was undone


def test_a_pyfuse3_without_lazyimages_patch_stops_it_before_it_mounts(tmp_path: Path) -> None:
    # The agent run as an unpatched pyfuse3 build would load: without the patch's marker.
    start = (
        "import runpy, sys, pyfuse3; del pyfuse3.LAZYIMAGE_PATCH; "
        "sys.argv[0] = 'lazyimage-agent'; "
        "runpy.run_module('lazyimage.agent.main', run_name='__main__')"
    )
    args = [
        sys.executable, "-c", start,
        "--state-dir", str(tmp_path / "state"),
        "--socket", str(tmp_path / "run" / "snapshotter.sock"),
        "--listen", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    done = subprocess.run(
        args,
        env={**os.environ, "PYTHONPATH": f"{_REPO / 'nodeagent'}{os.pathsep}{_REPO}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 7, done.stderr
    assert "has no lazyimage patch" in done.stderr and "scripts/setup" in done.stderr
    _no_traceback(done.stderr)
    assert mounts_under(tmp_path) == []


def test_a_control_socket_path_that_is_a_file(run_agent: Any, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    ended = run_agent("--control-socket", str(path))
    assert ended.code == 7
    assert f"{path}: --control-socket exists and is not a socket" in ended.err
    _no_traceback(ended.err)
    assert path.read_text() == "keep me"
    assert mounts_under(tmp_path) == []


def test_a_control_socket_another_agent_serves(
    run_agent: Any, agent_factory: Any, registry: RegistryServer, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    serving = agent_factory([registry.host], control=path)
    ended = run_agent("--control-socket", str(path))
    assert ended.code == 7
    assert f"{path}: --control-socket is in use by another process" in ended.err
    _no_traceback(ended.err)
    assert serving.control_request("GET", "/v1/layers") == []  # untouched


def test_a_socket_left_by_a_killed_agent_is_replaced(
    agent_factory: Any, registry: RegistryServer, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    killed = agent_factory([registry.host], control=path)
    killed.kill()
    assert path.is_socket()  # SIGKILL left it behind
    again = agent_factory([registry.host], control=path)
    assert again.control_request("GET", "/v1/layers") == []
    assert (path.stat().st_mode & 0o777) == 0o600
