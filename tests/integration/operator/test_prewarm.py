"""Prewarm end to end, all real: a pod annotated for prewarm is bound to a node; the operator
orders that node's agent, through the node's LazyImageNode, to prefetch the pod's image; the
agent fetches each layer's TOC and priority zone from the registry and reports back; the
operator folds the report into the image's LazyImage, which ``kubectl get lazyimages`` shows.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import parse_metrics
from tests.fixtures.images import TestImage
from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import RegistryServer, free_port
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.convert.cli import lazyimage
from tests.integration.operator.helpers import (
    agent_args,
    create,
    get_json,
    node_agent,
    node_image,
    prewarm_pod,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STARTUP_FILES = "usr/lib/python3.11/json/**\nusr/lib/python3.11/encodings/**\n"


def _lazyimage_of(cluster: KubeCluster, image: str) -> dict[str, Any] | None:
    listing = get_json(cluster, "lazyimages") or {"items": []}
    for item in listing["items"]:
        if item["spec"]["image"] == image:
            found: dict[str, Any] = item
            return found
    return None


def test_a_bound_pod_is_prewarmed_on_its_node(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    cluster, node = lazyimage_crds, "prewarm-node-a"
    listing = tmp_path / "startup.txt"
    listing.write_text(STARTUP_FILES)
    image = push_estargz(
        python_image, registry, "prewarm/python", "--prioritize-from", str(listing)
    )
    agent = node_agent(agent_factory, registry, cluster, node)
    metrics_port = free_port()
    operator = operator_factory(cluster.kubeconfig, "--metrics", f"127.0.0.1:{metrics_port}")
    registry.clear_access_log()

    created = time.monotonic()
    create(cluster, prewarm_pod("web", kube_namespace, node, image.ref))
    ordered = wait_for(
        "the node's order",
        lambda: (get_json(cluster, "lazyimagenode", node) or {}).get("spec", {}).get("orders"),
        60,
        operator.log,
    )
    order_seconds = time.monotonic() - created
    assert [order["image"] for order in ordered] == [image.ref]
    assert ordered[0]["reason"] == f"pod {kube_namespace}/web"
    report = wait_for(
        "the agent's report",
        lambda: (r := node_image(cluster, node, image.ref)) and r["state"] == "Ready" and r,
        120,
        lambda: agent.log() + operator.log(),
    )
    ready_seconds = time.monotonic() - created
    print(f"bound → order {order_seconds:.2f} s, → prefetched {ready_seconds:.2f} s")
    assert report["issuedAt"] == ordered[0]["issuedAt"]
    assert report["layers"] == len(image.layers)
    assert report["digest"].startswith("sha256:") and report["zoneBytes"] > 0
    assert report["fetchedBytes"] >= report["zoneBytes"] * 0.5
    # The agent read each layer's footer, TOC and zone from the registry.
    for layer in image.layers:
        assert registry.blob_gets(layer.digest), f"nothing fetched of {layer.digest}"

    # The LazyImage shows it.
    lazy = wait_for(
        "the LazyImage status",
        lambda: (
            (li := _lazyimage_of(cluster, image.ref)) and li.get("status", {}).get("ready") and li
        ),
        30,
        operator.log,
    )
    status = lazy["status"]
    assert status["summary"] == "1/1"
    assert status["nodeStatuses"][0]["node"] == node
    assert (
        status["conditions"][0]["type"] == "Ready" and status["conditions"][0]["status"] == "True"
    )
    row = cluster.kubectl("get", "lazyimages", lazy["metadata"]["name"]).stdout.splitlines()[1]
    assert row.split()[1:3] == [image.ref, "1/1"]

    # Prewarmed: mounting a layer and reading its startup files costs the registry nothing.
    python_layer = image.layers[1]
    registry.clear_access_log()
    mounted = agent.mount(image.ref, python_layer.digest, image.toc(python_layer))
    (Path(mounted["path"]) / "usr/lib/python3.11/json/__init__.py").read_bytes()
    (Path(mounted["path"]) / "usr/lib/python3.11/encodings/utf_8.py").read_bytes()
    assert registry.blob_gets(python_layer.digest) == []
    # ... and the hits reach the LazyImage.
    wait_for(
        "cache hits in the LazyImage",
        lambda: ((_lazyimage_of(cluster, image.ref) or {}).get("status") or {}).get("cacheHits"),
        30,
        agent.log,
    )
    print(cluster.kubectl("get", "lazyimages", "-o", "wide").stdout)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        exported = parse_metrics(page.read().decode())
    assert exported['lazyimage_operator_orders_total{result="written",source="pod"}'] == 1.0
    assert exported["lazyimage_operator_order_seconds_count"] == 1.0
    assert exported["lazyimage_operator_status_writes_total"] >= 2
    agent_metrics = agent.metrics()
    assert agent_metrics['lazyimage_prewarm_orders_total{result="ready"}'] == 1.0
    assert agent_metrics["lazyimage_prewarm_seconds_count"] == 1.0


def test_a_failed_prefetch_is_reported_with_its_reason(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    registry: RegistryServer,
    agent_factory: Any,
    operator_factory: Any,
) -> None:
    cluster, node = lazyimage_crds, "prewarm-node-missing"
    missing = f"{registry.host}/nowhere/app:1"
    agent = node_agent(agent_factory, registry, cluster, node)
    operator = operator_factory(cluster.kubeconfig)
    create(cluster, prewarm_pod("ghost", kube_namespace, node, missing))
    report = wait_for(
        "a failed report",
        lambda: (r := node_image(cluster, node, missing)) and r["state"] == "Failed" and r,
        60,
        lambda: agent.log() + operator.log(),
    )
    assert "nowhere/app" in report["message"]
    assert agent.metrics()['lazyimage_prewarm_orders_total{result="failed"}'] == 1.0
    lazy = wait_for(
        "the LazyImage to count the failure",
        lambda: (
            (li := _lazyimage_of(cluster, missing)) and li.get("status", {}).get("failed") and li
        ),
        30,
        operator.log,
    )
    assert lazy["status"]["summary"] == "0/1 (1 failed)"
    assert lazy["status"]["conditions"][0]["reason"] == "PrefetchFailed"


def test_a_pods_pull_secret_reaches_the_agent(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    """The agent has no credentials of its own: it reads the pod's pull secret by name."""
    cluster, node = lazyimage_crds, "prewarm-node-private"
    image = push_estargz_with_auth(busybox_image, auth_registry, tmp_path / "docker")
    config = (tmp_path / "docker" / "config.json").read_text()
    create(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pull", "namespace": kube_namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        },
    )
    agent = node_agent(agent_factory, auth_registry, cluster, node)
    operator = operator_factory(cluster.kubeconfig)
    pod = prewarm_pod("private", kube_namespace, node, image, imagePullSecrets=[{"name": "pull"}])
    create(cluster, pod)
    report = wait_for(
        "the private image's report",
        lambda: (r := node_image(cluster, node, image)) and r["state"] in ("Ready", "Failed") and r,
        60,
        lambda: agent.log() + operator.log(),
    )
    assert report["state"] == "Ready", report
    orders = get_json(cluster, "lazyimagenode", node)["spec"]["orders"]
    assert orders[0]["pullSecrets"] == [{"namespace": kube_namespace, "name": "pull"}]


def push_estargz_with_auth(image: TestImage, registry: RegistryServer, config_dir: Path) -> str:
    """Push and convert ``image`` into a registry that needs basic auth; ``config_dir`` gets
    the docker config the CLI reads the credentials from."""
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    env = {**os.environ, "DOCKER_CONFIG": str(config_dir)}
    source, target = (f"{registry.host}/private/busybox:{tag}" for tag in ("gzip", "esgz"))
    for args in (("copy", image.ref, source), ("convert", source, target)):
        done = lazyimage(*args, "--insecure-registry", registry.host, env=env)
        assert done.code == 0, done.err
    return target


def test_a_lazyimage_with_a_node_selector_orders_matching_nodes(
    lazyimage_crds: KubeCluster, operator_factory: Any
) -> None:
    cluster = lazyimage_crds
    for name, pool in (("sel-gpu-1", "gpu"), ("sel-cpu-1", "cpu")):
        create(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"pool": pool}},
            },
        )
    operator = operator_factory(cluster.kubeconfig)
    create(
        cluster,
        {
            "apiVersion": "lazyimage.io/v1alpha1",
            "kind": "LazyImage",
            "metadata": {"name": "selected"},
            "spec": {"image": "reg.local:5000/model:7", "nodeSelector": {"pool": "gpu"}},
        },
    )
    try:
        orders = wait_for(
            "an order on the gpu node",
            lambda: (
                (get_json(cluster, "lazyimagenode", "sel-gpu-1") or {})
                .get("spec", {})
                .get("orders")
            ),
            30,
            operator.log,
        )
        assert orders[0]["image"] == "reg.local:5000/model:7"
        assert orders[0]["lazyImage"] == "selected"
        # The node owns its channel: deleting the Node lets the garbage collector remove it.
        owners = get_json(cluster, "lazyimagenode", "sel-gpu-1")["metadata"]["ownerReferences"]
        node_uid = get_json(cluster, "node", "sel-gpu-1")["metadata"]["uid"]
        assert owners == [
            {"apiVersion": "v1", "kind": "Node", "name": "sel-gpu-1", "uid": node_uid}
        ]
        time.sleep(1.5)  # three status intervals: the cpu node would have been ordered by now
        assert get_json(cluster, "lazyimagenode", "sel-cpu-1") is None
        status = wait_for(
            "the pending node in the status",
            lambda: (get_json(cluster, "lazyimage", "selected") or {}).get("status"),
            30,
            operator.log,
        )
        assert status["summary"] == "0/1"
        assert status["nodeStatuses"] == [
            {
                "node": "sel-gpu-1",
                "state": "Pending",
                "fetchedBytes": 0,
                "cacheHits": 0,
                "cacheMisses": 0,
            }
        ]
    finally:
        cluster.kubectl("delete", "lazyimage", "selected", "--wait=false", check=False)
        cluster.kubectl("delete", "node", "sel-gpu-1", "sel-cpu-1", "--wait=false", check=False)


def test_orders_and_reports_survive_restarts(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    """A killed agent takes over what its status says it did and is not ordered again; a
    restarted operator keeps the orders it wrote and does not re-issue fresh ones."""
    cluster, node = lazyimage_crds, "prewarm-node-restart"
    image = push_estargz(busybox_image, registry, "prewarm/busybox")
    state = tmp_path / "agent-state"
    agent = agent_factory([registry.host], extra=agent_args(cluster, node), state_dir=state)
    operator = operator_factory(cluster.kubeconfig)
    create(cluster, prewarm_pod("one", kube_namespace, node, image.ref))
    first = wait_for(
        "the first report",
        lambda: (r := node_image(cluster, node, image.ref)) and r["state"] == "Ready" and r,
        60,
        lambda: agent.log() + operator.log(),
    )

    agent.kill()
    operator.stop()
    again = agent_factory([registry.host], extra=agent_args(cluster, node), state_dir=state)
    operator = operator_factory(cluster.kubeconfig)
    create(cluster, prewarm_pod("two", kube_namespace, node, image.ref))
    heartbeat = get_json(cluster, "lazyimagenode", node)["status"]["agent"]["heartbeat"]
    wait_for(
        "a heartbeat from the new agent",
        lambda: (
            get_json(cluster, "lazyimagenode", node)["status"]["agent"]["heartbeat"] != heartbeat
        ),
        30,
        again.log,
    )
    time.sleep(1.0)  # two status intervals for the operator to (wrongly) re-order
    after = get_json(cluster, "lazyimagenode", node)
    assert [o["issuedAt"] for o in after["spec"]["orders"]] == [first["issuedAt"]]
    report = node_image(cluster, node, image.ref)
    assert report is not None and report["state"] == "Ready"
    assert report["issuedAt"] == first["issuedAt"] and report["digest"] == first["digest"]
    events = [event.get("event") for event in again.log_events()]
    assert "prefetch_ordered" not in events, again.log()


def test_only_pods_of_a_lazy_runtime_class_are_prewarmed(
    lazyimage_crds: KubeCluster, kube_namespace: str, operator_factory: Any
) -> None:
    """With --lazy-runtime-class, a pod outside the class is pulled in full by containerd's
    default snapshotter, so its prewarm would fetch what nothing reads: it is not ordered."""
    cluster, tag = lazyimage_crds, secrets.token_hex(3)
    node, lazy_class = f"class-node-{tag}", f"lazy-{tag}"
    create(cluster, {
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": lazy_class}, "handler": "lazyimage",
    })  # fmt: skip
    metrics_port = free_port()
    operator = operator_factory(
        cluster.kubeconfig,
        *("--lazy-runtime-class", lazy_class, "--metrics", f"127.0.0.1:{metrics_port}"),
    )
    try:
        plain, lazy = f"reg.example/class-{tag}/plain:1", f"reg.example/class-{tag}/lazy:1"
        create(cluster, prewarm_pod("plain", kube_namespace, node, plain))
        create(
            cluster, prewarm_pod("lazy", kube_namespace, node, lazy, runtimeClassName=lazy_class)
        )
        orders = wait_for(
            "the lazy pod's order",
            lambda: ((get_json(cluster, "lazyimagenode", node) or {}).get("spec") or {}).get(
                "orders"
            ),
            60,
            operator.log,
        )
        assert [order["image"] for order in orders] == [lazy]

        def skipped() -> float:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as page:
                exported = parse_metrics(page.read().decode())
            return exported.get(
                'lazyimage_operator_orders_total{result="not-lazy",source="pod"}', 0
            )

        assert wait_for("the plain pod counted", lambda: skipped() == 1.0, 30, operator.log)
        assert _lazyimage_of(cluster, plain) is None
    finally:
        cluster.kubectl("delete", "runtimeclass", lazy_class, check=False)
        cluster.kubectl("delete", "lazyimagenode", node, "--ignore-not-found", check=False)
