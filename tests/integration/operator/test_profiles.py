"""Learned startup profiles end to end: an image converted without a priority zone runs on one
node; that node's agent records the files the container read in its first seconds and reports
them; the operator keeps them in the image's LazyImage; a prewarm on another node fetches
them, so the container there starts from the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import TestImage
from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.operator.helpers import (
    create,
    get_json,
    node_agent,
    node_image,
    prewarm_pod,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STARTUP = [
    "usr/lib/python3.11/json/__init__.py",
    "usr/lib/python3.11/json/decoder.py",
    "usr/lib/python3.11/colorsys.py",
]


def _ready(cluster: KubeCluster, node: str, image: str, agent: Any) -> dict[str, Any]:
    report: dict[str, Any] = wait_for(
        f"the prewarm on {node}",
        lambda: (r := node_image(cluster, node, image)) and r["state"] == "Ready" and r,
        120,
        agent.log,
    )
    return report


def test_a_profile_learned_on_one_node_prewarms_another(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
) -> None:
    cluster = lazyimage_crds
    image = push_estargz(python_image, registry, "learn/python")  # no priority zone
    python_layer = image.layers[1]
    operator = operator_factory(cluster.kubeconfig)

    # Node A: the first start, nothing known about the image.
    first = node_agent(agent_factory, registry, cluster, "learn-a", "--profile-window", "1")
    create(cluster, prewarm_pod("first", kube_namespace, "learn-a", image.ref))
    report = _ready(cluster, "learn-a", image.ref, first)
    assert report["zoneBytes"] == 0 and report["profileFiles"] == 0
    mounted = first.mount(image.ref, python_layer.digest, image.toc(python_layer))
    for path in STARTUP:
        (Path(mounted["path"]) / path).read_bytes()

    lazy_name = wait_for(
        "the LazyImage",
        lambda: next(
            (
                item["metadata"]["name"]
                for item in (get_json(cluster, "lazyimages") or {"items": []})["items"]
                if item["spec"]["image"] == image.ref
            ),
            None,
        ),
        30,
        operator.log,
    )
    profile = wait_for(
        "the learned profile",
        lambda: ((get_json(cluster, "lazyimage", lazy_name) or {}).get("status") or {}).get(
            "profile"
        ),
        30,
        lambda: first.log() + operator.log(),
    )
    assert profile["node"] == "learn-a" and profile["files"] == len(STARTUP)
    assert profile["layers"] == [{"digest": python_layer.digest, "paths": STARTUP}]
    row = cluster.kubectl("get", "lazyimage", lazy_name).stdout.splitlines()[1].split()
    assert row[6] == str(len(STARTUP))  # the PROFILE column

    # Node B: the prewarm fetches the learned files, and its start needs nothing more.
    second = node_agent(agent_factory, registry, cluster, "learn-b", "--profile-window", "1")
    create(cluster, prewarm_pod("second", kube_namespace, "learn-b", image.ref))
    report = _ready(cluster, "learn-b", image.ref, second)
    assert report["profileFiles"] == len(STARTUP) and report["fetchedBytes"] > 0
    registry.clear_access_log()
    mounted = second.mount(image.ref, python_layer.digest, image.toc(python_layer))
    for path in STARTUP:
        (Path(mounted["path"]) / path).read_bytes()
    assert registry.blob_gets(python_layer.digest) == []
