"""Shared steps of the operator tests: objects in, objects out, through kubectl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import RegistryServer


def get_json(cluster: KubeCluster, *args: str) -> Any:
    done = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def create(cluster: KubeCluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj))


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, detail: Callable[[], str] = str
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{detail()}")
        time.sleep(0.05)


def prewarm_pod(name: str, namespace: str, node: str, *images: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"lazyimage.io/prewarm": "true"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
            **spec,
        },
    }


def node_image(cluster: KubeCluster, node: str, image: str) -> dict[str, Any] | None:
    obj = get_json(cluster, "lazyimagenode", node)
    for report in ((obj or {}).get("status") or {}).get("images") or []:
        if report.get("image") == image:
            found: dict[str, Any] = report
            return found
    return None


def agent_args(cluster: KubeCluster, node: str, *extra: str) -> list[str]:
    """An agent that follows ``node``'s LazyImageNode and reports every half second."""
    return [
        "--node-name", node,
        "--kubeconfig", str(cluster.kubeconfig),
        "--no-background-fill",
        "--report-interval", "0.5",
        *extra,
    ]  # fmt: skip


def node_agent(
    agent_factory: Any, registry: RegistryServer, cluster: KubeCluster, node: str, *extra: str
) -> Any:
    return agent_factory([registry.host], extra=agent_args(cluster, node, *extra))
