"""The control API (mount, unmount, prefetch) is off unless asked for, and then served only on
an owner-only unix socket: never on the TCP port, which a cluster's other pods can reach."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentError, AgentProcess
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
_BODY = {"digest": "sha256:" + "1" * 64, "tocDigest": "sha256:" + "2" * 64}
_ROUTES = (
    ("POST", "/v1/layers", _BODY),
    ("GET", "/v1/layers", None),
    ("DELETE", "/v1/layers/" + "1" * 64, None),
    ("GET", "/v1/layers/" + "1" * 64 + "/profile", None),
    ("POST", "/v1/prefetch", _BODY),
)


def _refused_on_the_port(agent: AgentProcess, registry: RegistryServer) -> None:
    for method, path, payload in _ROUTES:
        body = {**payload, "ref": f"{registry.host}/a/b:1"} if payload else None
        with pytest.raises(AgentError) as refused:
            agent.port_request(method, path, body)
        assert refused.value.status == 404
        assert "only on the unix socket given by --control-socket" in refused.value.body


def test_the_control_api_is_off_unless_asked_for(
    registry: RegistryServer, agent_factory: Any
) -> None:
    agent = agent_factory([registry.host], control=False)
    assert agent.request("GET", "/healthz") == "ok\n"
    assert "lazyimage_cache_bytes" in agent.request("GET", "/metrics")
    assert agent.request("GET", "/status")["ready"] is True
    _refused_on_the_port(agent, registry)
    # No control socket was made: only the snapshotter's.
    assert sorted(p.name for p in (agent.base / "run").iterdir()) == ["snapshotter.sock"]
    assert registry.access_log() == []  # nothing reached the registry


def test_asked_for_it_is_served_on_an_owner_only_socket_and_still_not_on_the_port(
    registry: RegistryServer, agent_factory: Any
) -> None:
    agent = agent_factory([registry.host])
    assert agent.control_socket is not None
    info = agent.control_socket.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert agent.control_request("GET", "/v1/layers") == []
    with pytest.raises(AgentError) as missing:
        agent.control_request("GET", "/v1/nothing")
    assert missing.value.status == 404
    # The TCP port is the same with or without the socket.
    _refused_on_the_port(agent, registry)
    socket_path = agent.control_socket
    agent.stop()
    assert not socket_path.exists()  # removed at a clean stop


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone, which would keep
    other users out before the socket's own mode is even looked at)."""
    path = Path(tempfile.mkdtemp(prefix="lazyimage-control-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Connects as the user it runs as, sends one request and prints what came back, or the error.
_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /v1/layers HTTP/1.0\\r\\nHost: agent\\r\\n\\r\\n")
    answer = b"".join(iter(lambda: s.recv(65536), b""))
    print("answer", answer.split(b"\\r\\n", 1)[0].decode() if answer else "none")
except (BrokenPipeError, ConnectionResetError):
    print("answer none")  # closed by the server before or while asking
except OSError as exc:
    print("error", type(exc).__name__)
"""


def _ask(socket_path: Path, *, user: list[str]) -> str:
    done = subprocess.run(
        [*user, "/usr/bin/python3", "-I", "-c", _CLIENT, str(socket_path)],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_other_users_cannot_use_the_control_socket(
    registry: RegistryServer, agent_factory: Any, open_dir: Path
) -> None:
    socket_path = open_dir / "control.sock"
    agent = agent_factory([registry.host], control=socket_path)

    assert _ask(socket_path, user=[]) == "answer HTTP/1.0 200 OK"
    assert _ask(socket_path, user=_NOBODY) == "error PermissionError"

    # Loosened by hand, the socket still answers only root and the agent's own user.
    socket_path.chmod(0o666)
    assert _ask(socket_path, user=_NOBODY) == "answer none"  # connected, closed unanswered
    refused = [e for e in agent.log_events() if e.get("event") == "control_connection_refused"]
    assert [e["uid"] for e in refused] == [65534]
    assert agent.request("GET", "/healthz") == "ok\n"
