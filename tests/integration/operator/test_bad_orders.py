"""A bad order costs only itself: through the real order path (API server, operator, agent,
registry), a pod whose images fail to prewarm (a forged TOC digest, a blob the registry does
not have, a registry failing past its retries) gets each order reported ``Failed`` with the
reason, while the agent keeps serving its mounted layers and carries out the other orders.
Anyone who can create a pod chooses its images, so none of this may take a node down.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from lazyimage import names

from tests.fixtures.agent import drop_page_cache
from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz
from tests.integration.cri.helpers import read_image, write_image
from tests.integration.operator.helpers import (
    agent_args,
    create,
    node_image,
    prewarm_pod,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FORGED_TOC = "sha256:" + "0" * 64


def _forge_toc_digest(registry: RegistryServer, image: RemoteImage, target: str) -> RemoteImage:
    """``image`` again as ``target``, its first layer annotated with a TOC digest that is
    not its TOC's."""
    original = read_image(registry, image.ref)
    layers = list(original.manifest.layers)
    layers[0] = dataclasses.replace(
        layers[0], annotations={**layers[0].annotations, names.TOC_DIGEST_ANNOTATION: FORGED_TOC}
    )
    manifest = dataclasses.replace(original.manifest, layers=layers)
    write_image(registry, target, manifest, original.config)
    return RemoteImage(target, layers)


def _through(proxy: FaultProxy, registry: RegistryServer, ref: str) -> str:
    return ref.replace(registry.host, proxy.host, 1)


def _read_every_file(root: Path) -> int:
    """Read every regular file under ``root``; returns the bytes read."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                total += len(path.read_bytes())
    return total


def test_bad_orders_fail_alone_and_the_agent_keeps_serving(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
) -> None:
    cluster, node = lazyimage_crds, "bad-orders-node"
    good = push_estargz(busybox_image, registry, "orders/good")
    later = push_estargz(busybox_image, registry, "orders/later")
    # Each bad image compressed at its own level, so no two share a layer (a layer another
    # image already fetched would make a bad one succeed from the shared cache).
    forged = _forge_toc_digest(
        registry,
        push_estargz(busybox_image, registry, "orders/forged", "--level", "1"),
        f"{registry.host}/orders/forged:bad",
    )
    missing = push_estargz(busybox_image, registry, "orders/missing", "--level", "2")
    registry.delete_blob("orders/missing", missing.layers[0].digest)
    down = push_estargz(busybox_image, registry, "orders/down", "--level", "3")
    assert len({forged.layers[0].digest, missing.layers[0].digest, down.layers[0].digest}) == 3

    with FaultProxy(registry.host) as proxy:
        # The registry answers 503 to every blob read of this one repository, past every
        # retry; its manifests still resolve.
        proxy.add(Fault.status(503), method="GET", path=r"^/v2/orders/down/blobs/", times=None)
        agent = agent_factory([proxy.host], extra=agent_args(cluster, node))
        operator = operator_factory(cluster.kubeconfig)

        # A layer the agent serves before the bad orders arrive.
        layer = good.layers[0]
        mounted = agent.mount(_through(proxy, registry, good.ref), layer.digest, good.toc(layer))
        served = Path(mounted["path"])
        before = _read_every_file(served)
        assert before > 0

        bad = {
            "forged TOC": (_through(proxy, registry, forged.ref), "TOC"),
            "missing blob": (_through(proxy, registry, missing.ref), "404"),
            "registry down": (_through(proxy, registry, down.ref), "503"),
        }
        good_ref = _through(proxy, registry, good.ref)
        images = [ref for ref, _ in bad.values()] + [good_ref]
        create(cluster, prewarm_pod("bad-images", kube_namespace, node, *images))

        def settled() -> dict[str, dict[str, Any]] | None:
            reports = {ref: node_image(cluster, node, ref) for ref in images}
            done = all(r and r["state"] in ("Ready", "Failed") for r in reports.values())
            return {ref: r for ref, r in reports.items() if r} if done else None

        reports = wait_for("every order to settle", settled, 180, lambda: agent.log())
        for kind, (ref, reason) in bad.items():
            report = reports[ref]
            assert report["state"] == "Failed", (kind, report)
            assert reason in report["message"], (kind, report["message"])
            assert "internal error" not in report["message"], (kind, report["message"])
        assert reports[good_ref]["state"] == "Ready", reports[good_ref]

        # The agent lived through them: it answers, and its mount serves every file again
        # (the kernel's page cache dropped, so the reads reach the agent).
        assert agent.proc.poll() is None, agent.log()
        assert agent.request("GET", "/healthz") is not None
        drop_page_cache()
        assert _read_every_file(served) == before

        # And a later order is carried out.
        later_ref = _through(proxy, registry, later.ref)
        create(cluster, prewarm_pod("later", kube_namespace, node, later_ref))
        report = wait_for(
            "the later order",
            lambda: (
                (r := node_image(cluster, node, later_ref))
                and r["state"] in ("Ready", "Failed")
                and r
            ),
            120,
            lambda: agent.log() + operator.log(),
        )
        assert report["state"] == "Ready", report

    metrics = agent.metrics()
    assert metrics['lazyimage_prewarm_orders_total{result="failed"}'] == 3.0
    assert metrics['lazyimage_prewarm_orders_total{result="ready"}'] == 2.0
    assert metrics.get("lazyimage_order_runner_restarts_total", 0.0) == 0.0
