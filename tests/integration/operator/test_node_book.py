"""A started operator lists every LazyImageNode before it writes an order, against a real
kube-apiserver: the first order for a node that has its object already is patched into it,
with no create tried first, and the orders the object held are kept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from lazyimage.api import format_time
from lazyimage_operator.naming import lazyimage_name

from tests.fixtures.kube import KubeCluster
from tests.integration.operator.helpers import create, get_json, prewarm_pod, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _lazyimage_node_creates(cluster: KubeCluster) -> float:
    """The API server's count of POSTs to lazyimagenodes so far, whatever their answer."""
    with cluster.http_client() as http:
        text = http.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
        and 'resource="lazyimagenodes"' in line
        and 'verb="POST"' in line
    )


def test_an_operator_lists_lazyimage_nodes_before_its_first_order(
    lazyimage_crds: KubeCluster, kube_namespace: str, operator_factory: Any
) -> None:
    cluster, node = lazyimage_crds, "book-node-listed"
    held = {
        "image": "docker.io/library/held:1",
        "lazyImage": lazyimage_name("docker.io/library/held:1"),
        "issuedAt": format_time(datetime.now(UTC)),
        "reason": "pod earlier/one",
    }
    create(
        cluster,
        {
            "apiVersion": "lazyimage.io/v1alpha1",
            "kind": "LazyImageNode",
            "metadata": {"name": node},
            "spec": {"orders": [held]},
        },
    )
    try:
        creates = _lazyimage_node_creates(cluster)
        operator = operator_factory(cluster.kubeconfig)
        create(cluster, prewarm_pod("listed", kube_namespace, node, "reg.example/app:1"))
        orders = wait_for(
            "the pod's order beside the one held",
            lambda: len(o := get_json(cluster, "lazyimagenode", node)["spec"]["orders"]) == 2 and o,
            60,
            operator.log,
        )
        assert held in orders
        assert {o["image"] for o in orders} == {held["image"], "reg.example/app:1"}
        assert _lazyimage_node_creates(cluster) == creates, operator.log()
    finally:
        cluster.kubectl("delete", "lazyimagenode", node, "--ignore-not-found")
