"""Running containers never notice an agent restart: a container reads files in a loop,
through containerd, runc and overlayfs on the agent's FUSE mount, while the agent is
SIGKILLed ten times and stopped and started again (an upgrade) ten times. The FUSE
connection stays with the holder, each new agent takes the mount over (same inode
numbers, layers rebuilt from the stored TOCs, requests in flight sent again by the
kernel), and the page cache is dropped at each restart so the reads reach the new agent.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess, drop_page_cache
from tests.fixtures.cri import CRINodeFactory, read_cri_log
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_TOP
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]

RESTARTS = 20  # even ones SIGKILL, odd ones SIGTERM and start again (an upgrade)
FILES = (
    "usr/lib/python3.11/json/decoder.py",
    "usr/lib/python3.11/encodings/utf_8.py",
    "usr/bin/sha256sum",
    PYTHON_TOP.big_file,
)
# Reads each file, prints its digest or the error, with the time, forever.
READER = """
import hashlib, sys, time
while True:
    for path in sys.argv[1:]:
        try:
            with open(path, "rb") as f:
                line = "ok " + hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            line = "FAIL " + repr(exc)
        print(f"{time.time():.6f} {path} {line}", flush=True)
    time.sleep(0.02)
"""


def _expected_digests(image: TestImage) -> dict[str, str]:
    """Each file's sha256 from the image's own gzip layers (the topmost copy wins)."""
    found: dict[str, str] = {}
    for layer in image.layer_paths:
        with tarfile.open(layer, "r:gz") as archive:
            for member in archive:
                name = member.name.lstrip("./")
                if name in FILES and member.isfile():
                    data = archive.extractfile(member)
                    assert data is not None
                    found[name] = hashlib.sha256(data.read()).hexdigest()
    assert set(found) == set(FILES), set(FILES) - set(found)
    return {f"/{name}": digest for name, digest in found.items()}


def _reads_served(agent: AgentProcess) -> float:
    return sum(
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_fuse_operation_duration_seconds_count")
        and 'operation="read"' in series
    )


def _lines(log: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in read_cri_log(log):
        stamp, path, result = line.text.split(" ", 2)
        out.append((float(stamp), path, result))
    return out


def test_a_running_container_reads_on_across_20_agent_restarts(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
) -> None:
    expected = _expected_digests(python_image)
    image = push_estargz(python_image, registry, "cri/python")
    extra = ["--no-background-fill"]
    agent = agent_factory([registry.host], extra=extra)
    node = cri_node_factory(agent, [registry])
    node.pull(image.ref)
    sandbox_id, sandbox = node.start_pod("reader")
    reader = node.client.create_container(
        sandbox_id, sandbox, "reader", image.ref, ["python3", "-c", READER, *expected]
    )
    node.client.start_container(reader)
    log = Path(sandbox.log_directory) / "reader/0.log"

    def iterations_after(moment: float) -> int:
        return sum(
            1 for stamp, path, _ in _lines(log) if stamp > moment and path == f"/{FILES[-1]}"
        )

    deadline = time.monotonic() + 60
    while iterations_after(0) < 2:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)

    registry.clear_access_log()
    stopped_at: list[float] = []
    for restart in range(RESTARTS):
        assert _reads_served(agent) > 0, "the reads never reached this agent"
        if restart % 2 == 0:
            agent.kill()
        else:
            assert agent.stop() == 0  # SIGTERM, as an upgrade stops it
        stopped_at.append(time.time())
        # Whatever the container reads next waits for the new agent: not the page cache.
        drop_page_cache()
        agent = cri_node_factory.restart_agent(agent, [registry.host], extra=extra)
        ready = time.time()
        deadline = time.monotonic() + 60
        while iterations_after(ready) < 2:
            assert time.monotonic() < deadline, f"restart {restart}: no reads\n{agent.log()}"
            time.sleep(0.05)
        events = [e for e in agent.log_events() if e.get("event") == "mounted"]
        assert events and events[-1]["adopted"] is True, agent.log()
    assert _reads_served(agent) > 0

    node.client.stop_container(reader)
    # Every new agent served the layers from the stored TOCs and the chunk cache.
    assert registry_bytes(registry, [layer.digest for layer in image.layers]) == 0
    lines = _lines(log)
    failed = [line for line in lines if not line[2].startswith("ok ")]
    assert failed == [], failed[:5]
    wrong = [(path, result) for _, path, result in lines if result != f"ok {expected[path]}"]
    assert wrong == [], wrong[:5]
    # The pause each restart caused: the longest wait between two reads from the old
    # agent's end until the next restart (the reads in between waited in the kernel).
    stamps = [stamp for stamp, _, _ in lines]
    windows = zip(stopped_at, [*stopped_at[1:], stamps[-1]], strict=True)
    # A read that was already waiting when the agent ended counts from its predecessor.
    stalls = [
        _longest_gap([t for t in stamps if _last_before(stamps, start) <= t <= end])
        for start, end in windows
    ]
    kills, upgrades = stalls[0::2], stalls[1::2]
    print(
        f"\n{len(lines)} reads, 0 failed; stall per restart: SIGKILL median "
        f"{statistics.median(kills):.3f} s (max {max(kills):.3f}), upgrade median "
        f"{statistics.median(upgrades):.3f} s (max {max(upgrades):.3f}); "
        f"all: {' '.join(f'{stall:.2f}' for stall in stalls)}"
    )


def _last_before(stamps: list[float], moment: float) -> float:
    return max((t for t in stamps if t < moment), default=moment)


def _longest_gap(stamps: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
