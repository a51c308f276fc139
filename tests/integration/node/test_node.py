"""The one-node cluster fixture (tests/fixtures/cluster/) against its real components.

The node registers and becomes Ready on containerd 2.x; a pod is placed by the real scheduler,
its image pulled by containerd from the test registry over plain http, its log read back through
kube-apiserver and kubelet; a Deployment's ReplicaSet makes its pods (the controller manager).
A containerd drop-in takes effect at a containerd restart that running pods survive; a node
whose kubelet cannot start fails with kubelet's log and leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cluster import KubeNode, NodeStartError
from tests.fixtures.cluster.kubelet import Kubelet
from tests.fixtures.gotools import BUILD_TIMEOUT
from tests.fixtures.images import TestImage, push_image
from tests.fixtures.registry import RegistryServer

# The first test may build the Go tools and start the node.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(int(BUILD_TIMEOUT) + 600)]

KUBE_VERSION = "v1.34.4"
CONTAINERD_VERSION = "2.4.2"  # as CRI reports it, without the v
POD_TIMEOUT = 120.0
_POLL = 0.2


@pytest.fixture(scope="module")
def busybox_ref(
    kube_node: KubeNode, busybox_image: TestImage, shared_registry: RegistryServer
) -> str:
    """The busybox test image in the session registry, which the node trusts as plain http."""
    kube_node.trust_registry(shared_registry.host)
    return push_image(busybox_image, shared_registry.host, "node-test/busybox", "v1")


def _pod(
    name: str, image: str, command: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": image, "command": ["sh", "-c", command]}],
        },
    }


def _wait_pod_running(node: KubeNode, namespace: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + POD_TIMEOUT
    while True:
        pod: dict[str, Any] = node.kubectl_json("get", "pod", name, "-n", namespace)
        if pod["status"].get("phase") == "Running":
            return pod
        if pod["status"].get("phase") in ("Failed", "Succeeded") or time.monotonic() > deadline:
            events = node.kubectl("get", "events", "-n", namespace, check=False).stdout
            pytest.fail(f"pod {name} is not Running: {pod['status']}\nevents:\n{events}")
        time.sleep(_POLL)


def test_node_is_ready_on_containerd_2(kube_node: KubeNode) -> None:
    node = kube_node.kubectl_json("get", "node", kube_node.name)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", node["status"]["conditions"]
    assert not [t for t in node["spec"].get("taints") or [] if "not-ready" in t["key"]]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == KUBE_VERSION
    assert info["containerRuntimeVersion"] == f"containerd://{CONTAINERD_VERSION}"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == kube_node.node_ip


def test_pod_is_scheduled_pulled_run_and_logged(
    kube_node: KubeNode,
    node_namespace: str,
    busybox_ref: str,
    shared_registry: RegistryServer,
    record_property: Any,
) -> None:
    marker = f"hello-from-node-{secrets.token_hex(4)}"
    pod = _pod("probe", busybox_ref, f"echo {marker}; exec sleep 3600")
    assert "nodeName" not in pod["spec"]  # the scheduler must place it
    # Pulled from the registry even if an earlier test left the image on the node.
    pod["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    created = time.monotonic()
    kube_node.kubectl(
        "create",
        "-n",
        node_namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Pod", **pod}),
    )
    running = _wait_pod_running(kube_node, node_namespace, "probe")
    create_to_running = time.monotonic() - created
    record_property("pod_create_to_running_seconds", round(create_to_running, 2))
    print(f"pod create to Running: {create_to_running:.1f} s")

    assert running["spec"]["nodeName"] == kube_node.name
    events = kube_node.kubectl_json("get", "events", "-n", node_namespace)["items"]
    reasons = {
        (e["reason"], e.get("reportingComponent") or e["source"].get("component")) for e in events
    }
    assert ("Scheduled", "default-scheduler") in reasons, reasons
    assert any(e["reason"] == "Pulled" and busybox_ref in e["message"] for e in events), reasons
    # containerd resolved the tag over plain http at the test registry (a HEAD; the GET
    # follows only if it does not hold that manifest already, as after an earlier test).
    manifest_requests = [
        r
        for r in shared_registry.access_log()
        if r.method in ("HEAD", "GET") and r.path.startswith("/v2/node-test/busybox/manifests/")
    ]
    assert manifest_requests, "the node never asked the registry for the image"
    # The pod has an address of its own, from the bridge network.
    assert running["status"]["podIP"] != kube_node.node_ip
    assert ipaddress.ip_address(running["status"]["podIP"]) in kube_node.pod_subnet

    deadline = time.monotonic() + 30
    while True:
        logs = kube_node.kubectl("logs", "-n", node_namespace, "probe").stdout
        if marker in logs or time.monotonic() > deadline:
            break
        time.sleep(_POLL)
    assert logs.splitlines() == [marker]


def test_deployment_replicaset_creates_pods(
    kube_node: KubeNode, node_namespace: str, busybox_ref: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": _pod("", busybox_ref, "exec sleep 3600", labels={"app": "web"}),
        },
    }
    del deployment["spec"]["template"]["metadata"]["name"]  # type: ignore[index]
    kube_node.kubectl("create", "-n", node_namespace, "-f", "-", input=json.dumps(deployment))
    deadline = time.monotonic() + POD_TIMEOUT
    while True:
        status = kube_node.kubectl_json("get", "deployment", "web", "-n", node_namespace)["status"]
        if status.get("readyReplicas") == 2:
            break
        if time.monotonic() > deadline:
            events = kube_node.kubectl("get", "events", "-n", node_namespace, check=False).stdout
            pytest.fail(f"deployment web not ready: {status}\nevents:\n{events}")
        time.sleep(_POLL)

    pods = kube_node.kubectl_json("get", "pods", "-n", node_namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    owners = {
        ref["kind"]: ref["name"] for pod in pods for ref in pod["metadata"]["ownerReferences"]
    }
    assert list(owners) == ["ReplicaSet"]
    replicaset = kube_node.kubectl_json(
        "get", "replicaset", owners["ReplicaSet"], "-n", node_namespace
    )
    assert [(r["kind"], r["name"]) for r in replicaset["metadata"]["ownerReferences"]] == [
        ("Deployment", "web")
    ]
    assert {pod["spec"]["nodeName"] for pod in pods} == {kube_node.name}
    assert all(pod["status"]["phase"] == "Running" for pod in pods)


PROBE_HANDLER_DROPIN = """version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.probe]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.probe.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
  Root = "{root}"
"""


def _runtime_handlers(node: KubeNode) -> set[str]:
    status = node.kubectl_json("get", "node", node.name)["status"]
    return {handler["name"] for handler in status.get("runtimeHandlers") or []}


def test_containerd_dropin_applies_at_restart_and_pods_survive(
    kube_node: KubeNode, node_namespace: str, busybox_ref: str
) -> None:
    survivor = _pod("survivor", busybox_ref, "exec sleep 3600")
    kube_node.kubectl(
        "create", "-n", node_namespace, "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Pod", **survivor}),
    )  # fmt: skip
    before = _wait_pod_running(kube_node, node_namespace, "survivor")
    assert "probe" not in _runtime_handlers(kube_node)

    root = kube_node.containerd.base / "runc-probe"
    class_name = f"probe-{node_namespace}"
    kube_node.add_containerd_dropin("probe-handler", PROBE_HANDLER_DROPIN.format(root=root))
    try:
        kube_node.restart_containerd()
        deadline = time.monotonic() + 60
        while "probe" not in _runtime_handlers(kube_node):
            assert time.monotonic() < deadline, _runtime_handlers(kube_node)
            time.sleep(_POLL)
        runtime_class = {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": class_name},
            "handler": "probe",
        }
        kube_node.kubectl("create", "-f", "-", input=json.dumps(runtime_class))
        probe = _pod("on-probe", busybox_ref, "echo on-probe; exec sleep 3600")
        probe["spec"]["runtimeClassName"] = class_name
        kube_node.kubectl(
            "create", "-n", node_namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "Pod", **probe}),
        )  # fmt: skip
        _wait_pod_running(kube_node, node_namespace, "on-probe")
        # The handler's own runc root holds the pod's containers: the drop-in was used.
        assert (root / "k8s.io").is_dir() and any((root / "k8s.io").iterdir())
        after = kube_node.kubectl_json("get", "pod", "survivor", "-n", node_namespace)
        assert after["status"]["phase"] == "Running"
        assert after["status"]["containerStatuses"][0]["restartCount"] == 0
        assert (
            after["status"]["containerStatuses"][0]["containerID"]
            == before["status"]["containerStatuses"][0]["containerID"]
        )
    finally:
        kube_node.kubectl("delete", "pod", "on-probe", "-n", node_namespace, "--wait=true",
                          "--timeout=60s", check=False)  # fmt: skip
        kube_node.kubectl("delete", "runtimeclass", class_name, check=False)
        kube_node.remove_containerd_dropin("probe-handler")
        kube_node.restart_containerd()


def test_failed_start_names_the_component_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing_root = f"/lazyimage-node-missing-{secrets.token_hex(4)}"

    def bad_config(self: Kubelet) -> dict[str, object]:
        # A cgroup root that does not exist: kubelet refuses to start.
        return {**good_config(self), "cgroupRoot": missing_root}

    good_config = Kubelet.config
    monkeypatch.setattr(Kubelet, "config", bad_config)
    node = KubeNode(tmp_path / "node")
    try:
        with pytest.raises(NodeStartError) as failure:
            node.start()
    finally:
        node.stop()  # a no-op after a failed start; stops a node that started after all
    message = str(failure.value)
    assert message.startswith("kubelet exited"), message
    assert missing_root in message  # kubelet's own words, from its log's tail
    assert node.leftovers() == []
