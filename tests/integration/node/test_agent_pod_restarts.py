"""Running containers never notice the agent's pod being replaced: on the real node, with the
chart installed, a lazy container reads files in a loop while the agent's pod is deleted ten
times (the DaemonSet makes a new one) and upgraded ten times (``helm upgrade`` changes its pod
template; the chart's RollingUpdate replaces it). The FUSE holder has left the pod's cgroups
(the chart runs the agent with hostPID and ``agent.holderCgroup``), so it outlives each pod,
and each new agent takes the mount over. The page cache is dropped once each old pod is gone,
so the reads reach the new agent.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import drop_page_cache
from tests.fixtures.cluster import KubeNode
from tests.fixtures.gotools import BUILD_TIMEOUT, go_tool
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.project_image import IMAGE_BUILD_TIMEOUT
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes
from tests.integration.cri.helpers import read_image
from tests.integration.deploy.helm import Helm
from tests.integration.node.chart import ChartInstall
from tests.integration.node.lazypods import (
    HANDLER,
    RUNTIME_HANDLER_ANNOTATION,
    remove_lazy_pods,
    remove_lazy_snapshots,
)
from tests.integration.restart_reader import READER, expected_digests, parse_reads, stalls

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(int(BUILD_TIMEOUT) + IMAGE_BUILD_TIMEOUT + IMAGE_TEST_TIMEOUT + 1500),
]

RESTARTS = 20  # even ones delete the agent's pod, odd ones upgrade the DaemonSet
_TIMEOUT = 180.0
_POLL = 0.1


@pytest.fixture
def release(
    kube_node: KubeNode,
    shared_registry: RegistryServer,
    lazyimage_image: str,
    tmp_path: Path,
) -> Iterator[ChartInstall]:
    install = ChartInstall(
        kube_node,
        Helm(go_tool("helm"), tmp_path / "helm-home"),
        tmp_path / "chart",
        lazyimage_image,
        shared_registry.host,
        {"agent.updateStrategy.type": "RollingUpdate"},
    )
    install.prepare_node()
    try:
        install.install()
        install.wait_agent_ready()
        yield install
    finally:
        try:
            install.uninstall()
        finally:
            install.restore_node()


def _reader_pod(ref: str, paths: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader", "annotations": {RUNTIME_HANDLER_ANNOTATION: HANDLER}},
        "spec": {
            "runtimeClassName": HANDLER,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "main", "image": ref, "command": ["python3", "-c", READER, *paths]}
            ],
        },
    }


def test_a_running_container_reads_on_across_20_agent_pod_replacements(
    release: ChartInstall,
    shared_registry: RegistryServer,
    python_image: TestImage,
    record_property: Any,
) -> None:
    node, install = release.node, release
    expected = expected_digests(python_image)
    image = read_image(
        shared_registry,
        push_estargz(python_image, shared_registry, f"restarts-{secrets.token_hex(3)}/py").ref,
    )
    namespace = node.create_namespace(f"restarts-{secrets.token_hex(3)}")
    try:
        node.kubectl(
            "create", "-n", namespace, "-f", "-",
            input=json.dumps(_reader_pod(image.ref, sorted(expected))),
        )  # fmt: skip

        def reads() -> list[tuple[float, str, str]]:
            lines = node.kubectl("logs", "-n", namespace, "reader", check=False).stdout
            return parse_reads(lines.splitlines())

        def wait_reads_after(moment: float, what: str) -> None:
            # Two rounds of the four files, each read after ``moment``.
            deadline = time.monotonic() + _TIMEOUT
            while sum(1 for stamp, _, _ in reads() if stamp > moment) < 2 * len(expected):
                assert time.monotonic() < deadline, f"{what}: no reads\n{install.agent.log()}"
                time.sleep(0.5)

        wait_reads_after(0, "the reader's start")
        holder = install.holder_pids()
        assert len(holder) == 1, holder  # the holder is outside every pod
        shared_registry.clear_access_log()
        stopped_at: list[float] = []
        for restart in range(RESTARTS):
            old = install.agent.pod()["metadata"]["uid"]
            if restart % 2 == 0:
                install.kubectl("delete", "pod", install.agent.pod()["metadata"]["name"])
            else:
                install.upgrade(**{"agent.logLevel": ("debug", "info")[restart // 2 % 2]})
            _wait_pod_gone(install, old)
            stopped_at.append(time.time())
            drop_page_cache()  # what the container reads next must come from the new agent
            new = install.wait_agent_ready(_TIMEOUT)
            assert new["metadata"]["uid"] != old
            wait_reads_after(time.time(), f"restart {restart}")
            mounted = [e for e in install.agent.log_events() if e.get("event") == "mounted"]
            assert mounted and mounted[-1]["adopted"] is True, install.agent.log()
            assert install.holder_pids() == holder, "the holder was replaced"

        # Every new agent served the layers from the stored TOCs and the chunk cache.
        assert registry_bytes(shared_registry, [layer.digest for layer in image.layers]) == 0
        lines = reads()
        failed = [line for line in lines if not line[2].startswith("ok ")]
        assert failed == [], failed[:5]
        wrong = [(p, result) for _, p, result in lines if result != f"ok {expected[p]}"]
        assert wrong == [], wrong[:5]
        paused = stalls(lines, stopped_at)
        deletions, upgrades = paused[0::2], paused[1::2]
        record_property("stall_deletion_median_s", round(statistics.median(deletions), 3))
        record_property("stall_upgrade_median_s", round(statistics.median(upgrades), 3))
        print(
            f"\n{len(lines)} reads, 0 failed; stall per pod replacement: deletion median "
            f"{statistics.median(deletions):.2f} s (max {max(deletions):.2f}), upgrade median "
            f"{statistics.median(upgrades):.2f} s (max {max(upgrades):.2f}); "
            f"all: {' '.join(f'{stall:.2f}' for stall in paused)}"
        )
    finally:
        remove_lazy_pods(node, namespace, image.ref)
        remove_lazy_snapshots(node)
        node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _wait_pod_gone(install: ChartInstall, uid: str) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while True:
        pods = install.kubectl_json("get", "pods", "-l", "app.kubernetes.io/component=agent")
        if all(pod["metadata"]["uid"] != uid for pod in pods["items"]):
            return
        assert time.monotonic() < deadline, f"the agent's pod {uid} is still there"
        time.sleep(_POLL)
