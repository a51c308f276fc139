"""Pods opt in to lazy loading through the RuntimeClass ``lazyimage``, on a real kubelet and
containerd 2.x, with the agent serving the snapshotter as a host process.

The node's containerd imports the chart's drop-in (``charts/lazyimage/files/
containerd-dropin.toml``, pointed at this agent's socket and state), and the RuntimeClass is the
chart's own manifest. A pod of the class is pulled and run through the ``lazyimage``
snapshotter: its layers are mounted by the agent, containerd's content store never holds them,
and the registry serves a fraction of the image. The same image in a pod without the class is
pulled in full into containerd's overlayfs snapshotter, which the agent never sees, and pods
without the class start with the agent stopped.

What makes the pull lazy is that containerd learns the pod's handler at PullImage: from the
pod annotation ``io.containerd.cri.runtime-handler`` or from kubelet's RuntimeClassInImageCriApi
gate. With neither, the layers are downloaded in full. And an image pulled lazily has no layer
blobs on the node, so a pod of it without the class needs a pull of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess
from tests.fixtures.cluster import KubeNode
from tests.fixtures.gotools import BUILD_TIMEOUT
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage, push_image
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes
from tests.integration.cri.helpers import RegistryImage, layer_bytes, read_image, snapshot_results
from tests.integration.node.lazypods import (
    DROPIN,
    HANDLER,
    RUNTIME_HANDLER_ANNOTATION,
    chart_runtime_class,
    content_digests,
    node_dropin,
    pod_containers,
    probe_pod,
    remove_lazy_pods,
    remove_lazy_snapshots,
    run_pod,
    wait_container_error,
    wait_runtime_handler,
)

# The node may have to build its Go tools, and the python image may have to be built.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(int(BUILD_TIMEOUT) + IMAGE_TEST_TIMEOUT + 600),
]


def assert_lazy(
    agent: AgentProcess, node: KubeNode, image: RegistryImage, registry: RegistryServer
) -> int:
    """Every layer was mounted by the agent, none reached containerd's content store, and the
    registry served each within the design's budget. Returns the layers' bytes served."""
    results = snapshot_results(agent, image)
    assert all(r is not None and r["remote_snapshot_prepared"] is True for r in results), results
    mounted = {layer["digest"] for layer in agent.request("GET", "/v1/layers")}
    layers = [layer.digest for layer in image.layers]
    assert set(layers) <= mounted, (layers, mounted)
    held = content_digests(node)
    assert not set(layers) & held, "containerd downloaded layers of a lazy pod"
    assert image.manifest.config.digest in held  # the pull did run, through containerd
    for layer in image.layers:
        counted = layer_bytes(registry, agent, layer)
        print(f"lazy pod, layer {counted.describe()}")
        assert counted.served <= counted.budget, counted.describe()
    return registry_bytes(registry, layers)


@contextmanager
def lazy_node(
    node: KubeNode, agent: AgentProcess, namespace: str, ref: str, helm_home: Path
) -> Iterator[None]:
    """The node with the chart's drop-in (pointed at ``agent``) and RuntimeClass, for one test;
    afterwards the namespace's pods and the image ``ref`` are removed while the agent still
    serves them, and the node's containerd is back to its own configuration."""
    runtime_class = chart_runtime_class(helm_home)
    node.add_containerd_dropin(
        "lazyimage",
        node_dropin(
            DROPIN.read_text(),
            agent.base / "run" / "snapshotter.sock",
            agent.state_dir / "snapshotter",
            node,
        ),
    )
    try:
        node.restart_containerd()
        wait_runtime_handler(node)
        node.kubectl("apply", "-f", "-", input=runtime_class)
        yield
    finally:
        remove_lazy_pods(node, namespace, ref)
        remove_lazy_snapshots(node)
        node.kubectl("delete", "-f", "-", "--ignore-not-found", input=runtime_class)
        node.remove_containerd_dropin("lazyimage")
        node.restart_containerd()


def test_runtime_class_runs_lazily_and_others_stay_on_overlayfs(
    kube_node: KubeNode,
    node_namespace: str,
    registry: RegistryServer,
    python_image: TestImage,
    busybox_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    converted = push_estargz(python_image, registry, "node/python")
    busybox = push_image(busybox_image, registry.host, "node/busybox", "v1")
    image = read_image(registry, converted.ref)
    compressed = sum(layer.size for layer in image.layers)
    kube_node.trust_registry(registry.host)
    agent = agent_factory([registry.host], extra=["--no-background-fill"])

    with lazy_node(kube_node, agent, node_namespace, image.ref, tmp_path / "helm-home"):
        registry.clear_access_log()
        # 1. The RuntimeClass, and the annotation that tells containerd 2.4 to pull with the
        # handler's snapshotter (kubelet passes no runtime handler to PullImage unless its
        # RuntimeClassInImageCriApi gate is on).
        lazy = probe_pod("lazy", image.ref, runtimeClassName=HANDLER)
        lazy["metadata"]["annotations"] = {RUNTIME_HANDLER_ANNOTATION: HANDLER}
        assert run_pod(kube_node, node_namespace, lazy) == [PYTHON_PROBE_OUTPUT]
        containers = pod_containers(kube_node, node_namespace, "lazy")
        assert len(containers) == 2  # the sandbox and the probe
        assert {c["Snapshotter"] for c in containers} == {"lazyimage"}
        log = kube_node.containerd.log_path.read_text(errors="replace")
        assert f"for runtime {HANDLER}, using snapshotter lazyimage" in log
        assert "Using deprecated annotation" in log  # containerd 2.4: gone in 2.5
        lazy_bytes = assert_lazy(agent, kube_node, image, registry)
        print(f"lazy pod: registry served {lazy_bytes} of the layers' {compressed} bytes")
        record_property("lazy_layer_bytes", lazy_bytes)
        record_property("image_compressed_bytes", compressed)
        assert lazy_bytes < compressed / 2

        # 2. The same image without the RuntimeClass: containerd's overlayfs, a full pull.
        # (Always: kubelet would otherwise take the lazily pulled image as present; see README.)
        mounted_before = agent.request("GET", "/v1/layers")
        registry.clear_access_log()
        full = probe_pod("full", image.ref)
        full["spec"]["containers"][0]["imagePullPolicy"] = "Always"
        assert run_pod(kube_node, node_namespace, full) == [PYTHON_PROBE_OUTPUT]
        containers = pod_containers(kube_node, node_namespace, "full")
        assert len(containers) == 2
        assert {c["Snapshotter"] for c in containers} == {"overlayfs"}
        for container in containers:  # the snapshots are overlayfs's, not the agent's
            kube_node.containerd.ctr(
                "snapshots", "--snapshotter", "overlayfs", "info", container["SnapshotKey"]
            )
        full_bytes = registry_bytes(registry, [layer.digest for layer in image.layers])
        print(f"pod without the RuntimeClass: registry served {full_bytes} bytes")
        record_property("full_layer_bytes", full_bytes)
        assert full_bytes >= compressed
        assert {layer.digest for layer in image.layers} <= content_digests(kube_node)
        assert agent.request("GET", "/v1/layers") == mounted_before

        # 3. No pod without the RuntimeClass needs the agent, the agent's own included: with
        # the agent stopped, containerd restarts with the drop-in, the node is Ready, and a pod
        # pulls and starts.
        remove_lazy_pods(kube_node, node_namespace, image.ref)
        remove_lazy_snapshots(kube_node)
        agent.stop()
        kube_node.restart_containerd()
        busybox_pod = probe_pod("agent-down", busybox)
        busybox_pod["spec"]["containers"][0]["command"] = ["echo", "started without the agent"]
        assert run_pod(kube_node, node_namespace, busybox_pod) == ["started without the agent"]
        assert {c["Snapshotter"] for c in pod_containers(kube_node, node_namespace)} == {
            "overlayfs"
        }


def test_the_annotation_is_what_makes_the_pull_lazy(
    kube_node: KubeNode,
    node_namespace: str,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
) -> None:
    """What containerd 2.4 and kubelet 1.34 do without the pod annotation, and to a pod
    without the RuntimeClass once an image was pulled lazily (README, "With containerd 2.x
    and a RuntimeClass")."""
    converted = push_estargz(python_image, registry, "node/python")
    image = read_image(registry, converted.ref)
    layers = {layer.digest for layer in image.layers}
    kube_node.trust_registry(registry.host)
    agent = agent_factory([registry.host], extra=["--no-background-fill"])

    with lazy_node(kube_node, agent, node_namespace, image.ref, tmp_path / "helm-home"):
        # The RuntimeClass alone: kubelet pulls with the default snapshotter (the layers are
        # downloaded in full), then containerd unpacks them into the agent's snapshotter from
        # its content store. The pod runs, on lazily mounted layers, with nothing saved.
        registry.clear_access_log()
        assert run_pod(
            kube_node, node_namespace, probe_pod("class-only", image.ref, runtimeClassName=HANDLER)
        ) == [PYTHON_PROBE_OUTPUT]
        containers = pod_containers(kube_node, node_namespace, "class-only")
        assert {c["Snapshotter"] for c in containers} == {"lazyimage"}
        assert layers <= content_digests(kube_node)
        assert registry_bytes(registry, sorted(layers)) >= sum(layer.size for layer in image.layers)
        remove_lazy_pods(kube_node, node_namespace, image.ref)
        remove_lazy_snapshots(kube_node)

        # Pulled lazily, the image is present for kubelet, but containerd has no layer blobs
        # to unpack into overlayfs: a pod without the RuntimeClass (IfNotPresent) cannot start.
        lazy = probe_pod("lazy", image.ref, runtimeClassName=HANDLER)
        lazy["metadata"]["annotations"] = {RUNTIME_HANDLER_ANNOTATION: HANDLER}
        assert run_pod(kube_node, node_namespace, lazy) == [PYTHON_PROBE_OUTPUT]
        assert not layers & content_digests(kube_node)
        kube_node.kubectl(
            "create", "-n", node_namespace, "-f", "-",
            input=json.dumps(probe_pod("plain", image.ref)),
        )  # fmt: skip
        message = wait_container_error(kube_node, node_namespace, "plain")
        assert "error unpacking image" in message and "not found" in message, message
        assert image.layers[0].digest in message


@contextmanager
def kubelet_feature_gate(
    node: KubeNode, gate: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """kubelet restarted with ``gate`` on, and restarted as it was afterwards."""
    kubelet = node.kubelet
    assert kubelet is not None
    config = kubelet.config()

    def with_gate() -> dict[str, object]:
        return {**config, "featureGates": {gate: True}}

    kubelet.stop()
    monkeypatch.setattr(kubelet, "config", with_gate)
    try:
        kubelet.start(120)
        node.wait_ready()
        yield
    finally:
        kubelet.stop()
        monkeypatch.undo()
        kubelet.start(120)
        node.wait_ready()


def test_kubelet_gate_passes_the_handler_without_the_annotation(
    kube_node: KubeNode,
    node_namespace: str,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kubelet's RuntimeClassInImageCriApi gate: PullImage carries the pod's runtime handler,
    so the RuntimeClass alone makes the pull lazy."""
    converted = push_estargz(python_image, registry, "node/python")
    image = read_image(registry, converted.ref)
    compressed = sum(layer.size for layer in image.layers)
    kube_node.trust_registry(registry.host)
    agent = agent_factory([registry.host], extra=["--no-background-fill"])

    with (
        lazy_node(kube_node, agent, node_namespace, image.ref, tmp_path / "helm-home"),
        kubelet_feature_gate(kube_node, "RuntimeClassInImageCriApi", monkeypatch),
    ):
        log_before = kube_node.containerd.log_path.stat().st_size
        registry.clear_access_log()
        pod = probe_pod("gated", image.ref, runtimeClassName=HANDLER)
        assert RUNTIME_HANDLER_ANNOTATION not in json.dumps(pod)
        assert run_pod(kube_node, node_namespace, pod) == [PYTHON_PROBE_OUTPUT]
        assert {c["Snapshotter"] for c in pod_containers(kube_node, node_namespace)} == {
            "lazyimage"
        }
        with kube_node.containerd.log_path.open("rb") as log:
            log.seek(log_before)
            pulled = log.read().decode(errors="replace")
        assert f"for runtime {HANDLER}, using snapshotter lazyimage" in pulled
        assert "deprecated annotation" not in pulled  # the handler came in the request
        lazy_bytes = assert_lazy(agent, kube_node, image, registry)
        print(f"kubelet gate: registry served {lazy_bytes} of the layers' {compressed} bytes")
        assert lazy_bytes < compressed / 2
