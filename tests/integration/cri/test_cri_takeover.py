"""Running containers never notice an agent restart: a container reads files in a loop,
through containerd, runc and overlayfs on the agent's FUSE mount, while the agent is
SIGKILLed ten times and stopped and started again (an upgrade) ten times. The FUSE
connection stays with the holder, each new agent takes the mount over (same inode
numbers, layers rebuilt from the stored TOCs, requests in flight sent again by the
kernel), and the page cache is dropped at each restart so the reads reach the new agent.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess, drop_page_cache
from tests.fixtures.cri import CRINodeFactory, read_cri_log
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes
from tests.integration.restart_reader import (
    FILES,
    READER,
    Read,
    expected_digests,
    parse_reads,
    stalls,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]

RESTARTS = 20  # even ones SIGKILL, odd ones SIGTERM and start again (an upgrade)


def _reads_served(agent: AgentProcess) -> float:
    return sum(
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_fuse_operation_duration_seconds_count")
        and 'operation="read"' in series
    )


def _lines(log: Path) -> list[Read]:
    return parse_reads([line.text for line in read_cri_log(log)])


def test_a_running_container_reads_on_across_20_agent_restarts(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
) -> None:
    expected = expected_digests(python_image)
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
    paused = stalls(lines, stopped_at)
    kills, upgrades = paused[0::2], paused[1::2]
    print(
        f"\n{len(lines)} reads, 0 failed; stall per restart: SIGKILL median "
        f"{statistics.median(kills):.3f} s (max {max(kills):.3f}), upgrade median "
        f"{statistics.median(upgrades):.3f} s (max {max(upgrades):.3f}); "
        f"all: {' '.join(f'{stall:.2f}' for stall in paused)}"
    )
