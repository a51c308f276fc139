"""The agent killed (SIGKILL) in the middle of a cache write and in the middle of a read,
with the FUSE holder (the default): the next agent removes the killed write's temp file at
start, and answers the read that was waiting, with the right bytes."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from lazyimage import estargz

from tests.fixtures.agent import AgentProcess
from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.agent.test_agent_faults import _mount_all, _toc_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _temp_files(cache: Path) -> list[Path]:
    return list((cache / "sha256").glob("*/.tmp-*"))


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped: SIGSTOP takes effect a moment after
    kill() returns, and a writer thread may rename its temp file in that moment."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("T", "t"):
                return False
    return True


def _kill_mid_write(agent: AgentProcess, cache: Path) -> Path:
    """SIGKILL the agent while a chunk's temp file is on disk: stop it, look, go on if
    there is none. Returns the temp file left behind."""
    pid = agent.proc.pid
    while True:
        os.kill(pid, signal.SIGSTOP)
        while not _stopped(pid):
            time.sleep(0.001)
        temps = _temp_files(cache)
        if temps:
            agent.kill()
            return temps[0]
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)


def _covers(header: str | None, offset: int) -> bool:
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header or "")
    return match is not None and int(match[1]) <= offset <= int(match[2])


def test_an_agent_killed_mid_write_and_mid_read(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    python_layer = image.layers[1]
    blob = registry.blob_path(python_layer.digest).read_bytes()
    toc = _toc_of(registry, python_layer.digest)
    state = tmp_path / "state"
    cache = state / "cache"
    flags = [
        "--background-quiet", "0",
        "--prefetch-bandwidth", str(2 << 20),  # a fill that lasts
        "--stall-timeout", "60",  # a held request is waited for, not asked again
    ]  # fmt: skip
    with FaultProxy(registry.host) as proxy:
        ref = image.ref.replace(registry.host, proxy.host)

        # 1. Killed while the background fill writes a chunk.
        first = agent_factory([proxy.host], extra=flags, state_dir=state)
        _mount_all(first, image, ref)
        left = _kill_mid_write(first, cache)
        assert left.exists()

        # 2. The next agent takes the mount over; its start removes the temp file.
        held = proxy.add(Fault.stall(math.inf), method="GET", path=python_layer.digest, times=None)
        second = agent_factory([proxy.host], extra=flags, state_dir=state)
        [loaded] = [e for e in second.log_events() if e.get("event") == "cache.loaded"]
        assert loaded["temps_removed"] >= 1
        assert not left.exists()  # (its own fill may be writing others by now)

        # A file not cached yet, read while every request for its layer is held.
        stored = {p.name for p in (cache / "sha256").glob("*/*")}
        name, chunks = next(
            (n.path, n.chunks)
            for n in toc.nodes
            if n.path.startswith("usr/lib/python3.11/")
            and n.chunks
            and all(c.digest.removeprefix("sha256:") not in stored for c in n.chunks)
        )
        expected = b"".join(estargz.verify_chunk(c, blob[c.offset : c.end]) for c in chunks)
        [layer_dir] = [
            Path(m["path"])
            for m in second.request("GET", "/v1/layers")
            if m["digest"] == python_layer.digest
        ]
        reader = subprocess.Popen(
            ["cat", str(layer_dir / name)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            while not any(
                r.fault is not None and _covers(r.range, chunks[0].offset) for r in proxy.requests
            ):
                assert reader.poll() is None, reader.stderr.read() if reader.stderr else ""
                time.sleep(0.05)
            assert held.applied >= 1

            # 3. Killed while the read waits for the registry; the next agent answers it.
            second.kill()
            proxy.clear()
            third = agent_factory([proxy.host], extra=flags, state_dir=state)
            out, err = reader.communicate(timeout=120)
        finally:
            if reader.poll() is None:
                reader.kill()
        assert reader.returncode == 0, err
        assert out == expected
        assert third.stop() == 0  # so that no write of its own fill is under way below

    # Nothing torn or stray: every chunk file holds the bytes its name says.
    assert _temp_files(cache) == []
    for path in (cache / "sha256").glob("*/*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
