"""The kopf handlers in this process, through kopf's ``KopfRunner``, against a real API server:
the LazyImageNodes listed at start, reported on, and deleted reach each LazyImage's status;
a bound pod reaches its node's orders; and the liveness probe answers for the pod watch."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from lazyimage_operator.config import OperatorConfig
from lazyimage_operator.handlers import operator_settings, register
from lazyimage_operator.naming import lazyimage_name

from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import free_port
from tests.integration.operator.helpers import create, get_json, prewarm_pod, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = "2026-11-28T12:00:00.000000Z"


def _probe(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _summary(cluster: KubeCluster, name: str) -> str | None:
    return ((get_json(cluster, "lazyimage", name) or {}).get("status") or {}).get("summary")


def _report(cluster: KubeCluster, node: str, image: str, lazy: str, issued: str) -> None:
    report = {"image": image, "lazyImage": lazy, "issuedAt": issued, "state": "Ready"}
    cluster.kubectl(
        "patch", "lazyimagenode", node, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"images": [report]}}),
    )  # fmt: skip


# kopf's in-process runner (its own event loop, in a thread) now and then leaves a connection
# to the API server for the garbage collector. Collected at the end of this test and not
# reported, instead of failing whichever later test the collector happens to run in.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_handlers_fold_reports_order_pods_and_answer_the_probe(
    lazyimage_crds: KubeCluster, kube_namespace: str
) -> None:
    cluster, tag = lazyimage_crds, secrets.token_hex(3)
    listed, bound = f"handlers-{tag}-listed", f"handlers-{tag}-bound"
    # Known before the operator starts: a node ordered and ready for one LazyImage.
    image = f"reg.example/handlers-{tag}/app:1"
    lazy = lazyimage_name(image)
    create(cluster, {
        "apiVersion": "lazyimage.io/v1alpha1", "kind": "LazyImageNode",
        "metadata": {"name": listed},
        "spec": {"orders": [{"image": image, "lazyImage": lazy, "issuedAt": T0}]},
    })  # fmt: skip
    _report(cluster, listed, image, lazy, T0)
    create(cluster, {
        "apiVersion": "lazyimage.io/v1alpha1", "kind": "LazyImage",
        "metadata": {"name": lazy}, "spec": {"image": image},
    })  # fmt: skip

    url = f"http://127.0.0.1:{free_port()}/healthz"
    config = OperatorConfig(
        kubeconfig=cluster.kubeconfig, status_interval=0.5, order_refresh=timedelta(minutes=5)
    )
    registry = kopf.OperatorRegistry()
    register(registry, config)
    seen: dict[str, Any] = {}

    @kopf.on.startup(id="test_memo", registry=registry)
    async def keep_memo(memo: kopf.Memo, **_: Any) -> None:
        seen["memo"], seen["loop"] = memo, asyncio.get_running_loop()

    args = ["run", "--standalone", "--all-namespaces", "--liveness", url]
    with KopfRunner(args, registry=registry, settings=operator_settings(), timeout=60):
        wait_for("the listed node folded", lambda: _summary(cluster, lazy) == "1/1", 60)

        # A bound pod: its node is ordered, its image gets a LazyImage, and the report folds.
        pod_image = f"reg.example/handlers-{tag}/pod:1"
        pod_lazy = lazyimage_name(pod_image)
        create(cluster, prewarm_pod("web", kube_namespace, bound, pod_image))
        orders = wait_for(
            "the bound pod's order",
            lambda: ((get_json(cluster, "lazyimagenode", bound) or {}).get("spec") or {}).get(
                "orders"
            ),
            60,
        )
        assert [(o["image"], o["lazyImage"]) for o in orders] == [(pod_image, pod_lazy)]
        wait_for("the pod's LazyImage", lambda: _summary(cluster, pod_lazy) == "0/1", 60)
        _report(cluster, bound, pod_image, pod_lazy, orders[0]["issuedAt"])
        wait_for("the pod's report folded", lambda: _summary(cluster, pod_lazy) == "1/1", 60)
        # A deleted node no longer counts.
        cluster.kubectl("delete", "lazyimagenode", bound)
        wait_for("the deletion folded", lambda: _summary(cluster, pod_lazy) == "0/0", 60)

        status, body = _probe(url)
        assert status == 200, body
        assert body["pod_watch"] == {"restarts": 0}
        assert body["status_loop"] == {"restarts": 0}
        assert body["node_watch"] == {"restarts": 0}

        # A pod watch that has died fails the probe (kopf keeps an answer for 10 s).
        task = seen["memo"]["pods"]
        seen["loop"].call_soon_threadsafe(task.cancel)
        failing = wait_for("a failing probe", lambda: _probe(url)[0] == 500, 60)
        assert failing
    for name in (listed, bound):
        cluster.kubectl("delete", "lazyimagenode", name, "--ignore-not-found", check=False)
    for name in (lazy, pod_lazy):
        cluster.kubectl("delete", "lazyimage", name, "--wait=false", check=False)
    gc.collect()
