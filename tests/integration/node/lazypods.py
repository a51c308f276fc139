"""Steps shared by the tests of lazy pods on the test node: the chart's containerd drop-in and
RuntimeClass made for this node, probe pods, and what containerd holds for them."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fixtures.cluster import KubeNode
from tests.fixtures.cluster.containerd import RUNC_BINARY
from tests.fixtures.gotools import go_tool
from tests.images import PYTHON_PROBE_CODE
from tests.integration.deploy.helm import CHART, Helm, manifests

DROPIN = CHART / "files" / "containerd-dropin.toml"
HANDLER = "lazyimage"
RUNTIME_HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler"
PREWARM = "lazyimage.io/prewarm"
CONTENT_DIR = "io.containerd.content.v1.content"
POD_TIMEOUT = 180.0
# What the probe (PYTHON_PROBE_CODE) imports: the priority zone of an eStargz python image, so
# that a prewarm fetches it ahead of the pod.
PROBE_STARTUP = ("encodings", "asyncio", "email", "json")
_POLL = 0.25


def node_dropin(template: str, socket: Path, snapshots: Path, node: KubeNode) -> str:
    """The chart's drop-in with the agent's ``socket`` and snapshot root, and the node's runc
    options (cgroupfs, Debian's runc, the node's runc root, as its ``runc`` handler has)."""
    replacements = {
        '"/run/lazyimage/snapshotter.sock"': f'"{socket}"',
        '"/var/lib/lazyimage/snapshotter"': f'"{snapshots}"',
        "SystemdCgroup = true": (
            f'SystemdCgroup = false\n    BinaryName = "{RUNC_BINARY}"\n'
            f'    Root = "{node.containerd.runc_root}"'
        ),
    }
    for old, new in replacements.items():
        assert template.count(old) == 1, f"{DROPIN} no longer has {old} once"
        template = template.replace(old, new)
    return template


def chart_runtime_class(home: Path) -> str:
    """The chart's RuntimeClass, rendered with its default values."""
    rendered = Helm(go_tool("helm"), home).run(
        "template", "lazyimage", str(CHART), "--show-only", "templates/runtimeclass.yaml"
    )
    [runtime_class] = manifests(rendered.stdout)
    assert runtime_class["kind"] == "RuntimeClass"
    assert runtime_class["metadata"]["name"] == runtime_class["handler"] == HANDLER
    return rendered.stdout


def write_startup_listing(path: Path) -> Path:
    """``lazyimage convert --prioritize-from`` listing of PROBE_STARTUP's packages."""
    path.write_text("".join(f"usr/lib/python3.11/{package}/**\n" for package in PROBE_STARTUP))
    return path


def rfc3339_seconds(text: str) -> float:
    """An RFC 3339 UTC time with up to nanoseconds (containerd's, kubelet's log timestamps), as
    seconds since the epoch."""
    head, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)


def probe_pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "main", "image": image, "command": ["python3", "-c", PYTHON_PROBE_CODE]}
            ],
            **spec,
        },
    }


def lazy_probe(name: str, ref: str) -> dict[str, Any]:
    """A probe pod as a user writes it: prewarmed, and of the RuntimeClass with the annotation
    that makes containerd 2.4 pull with the handler's snapshotter."""
    pod = probe_pod(name, ref, runtimeClassName=HANDLER)
    pod["metadata"]["annotations"] = {PREWARM: "true", RUNTIME_HANDLER_ANNOTATION: HANDLER}
    return pod


def run_pod(node: KubeNode, namespace: str, pod: dict[str, Any]) -> list[str]:
    """Create the pod, wait for it to succeed, return its log lines."""
    name = pod["metadata"]["name"]
    node.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + POD_TIMEOUT
    while True:
        status = node.kubectl_json("get", "pod", name, "-n", namespace)["status"]
        if status.get("phase") == "Succeeded":
            break
        if status.get("phase") == "Failed" or time.monotonic() > deadline:
            events = node.kubectl("get", "events", "-n", namespace, check=False).stdout
            raise AssertionError(f"pod {name} did not succeed: {status}\nevents:\n{events}")
        time.sleep(_POLL)
    lines: list[str] = node.kubectl("logs", "-n", namespace, name).stdout.splitlines()
    return lines


def pod_containers(node: KubeNode, namespace: str, pod: str | None = None) -> list[dict[str, Any]]:
    """containerd's records of a pod's containers (or a namespace's), sandboxes included."""
    found = []
    for container_id in node.containerd.ctr("containers", "ls", "-q").split():
        info = json.loads(node.containerd.ctr("containers", "info", container_id))
        labels = info.get("Labels") or {}
        if labels.get("io.kubernetes.pod.namespace") == namespace and (
            pod is None or labels.get("io.kubernetes.pod.name") == pod
        ):
            found.append(info)
    return found


def content_digests(node: KubeNode) -> set[str]:
    """Every blob in the node's containerd content store."""
    blobs = node.containerd.base / "root" / CONTENT_DIR / "blobs" / "sha256"
    return {f"sha256:{path.name}" for path in blobs.iterdir()} if blobs.is_dir() else set()


def runtime_handlers(node: KubeNode) -> set[str]:
    status = node.kubectl_json("get", "node", node.name)["status"]
    return {handler["name"] for handler in status.get("runtimeHandlers") or []}


def remove_lazy_pods(node: KubeNode, namespace: str, ref: str) -> None:
    """Stop and remove the namespace's pods and the image ``ref`` through CRI, now, while the
    agent still serves their snapshots (kubelet would take its time). Run again once nothing
    is left, it removes nothing."""
    # First the API objects, so that kubelet does not start them again.
    node.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--wait=true", "--timeout=120s", check=False
    )
    sandboxes = [
        info["ID"]
        for info in pod_containers(node, namespace)
        if info["Labels"].get("io.cri-containerd.kind") == "sandbox"
    ]
    client = node.containerd.cri()
    try:
        for sandbox_id in sandboxes:
            client.stop_pod_sandbox(sandbox_id)
            client.remove_pod_sandbox(sandbox_id)
        client.remove_image(ref)  # every reference CRI made for it, so its snapshots go
    finally:
        client.close()


def remove_lazy_snapshots(node: KubeNode) -> None:
    """Remove what containerd records in the ``lazyimage`` snapshotter (the pause image's
    layer stays there after its pods, pinned), children first: the next test's agent starts
    with no snapshots, and containerd must not believe it has them."""
    while True:
        listed = node.containerd.ctr("snapshots", "--snapshotter", "lazyimage", "ls")
        rows = [line.split() for line in listed.splitlines()[1:] if line.strip()]
        if not rows:
            return
        parents = {row[1] for row in rows if len(row) == 3}
        leaves = [row[0] for row in rows if row[0] not in parents]
        assert leaves, rows
        node.containerd.ctr("snapshots", "--snapshotter", "lazyimage", "rm", *leaves)


def wait_container_error(node: KubeNode, namespace: str, pod: str) -> str:
    """The message of the pod's container waiting in CreateContainerError."""
    deadline = time.monotonic() + POD_TIMEOUT
    while True:
        status = node.kubectl_json("get", "pod", pod, "-n", namespace)["status"]
        for container in status.get("containerStatuses") or []:
            waiting = container.get("state", {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerError":
                return str(waiting.get("message", ""))
        assert status.get("phase") == "Pending", status
        assert time.monotonic() < deadline, status
        time.sleep(_POLL)


def wait_runtime_handler(node: KubeNode, timeout: float = 60) -> None:
    """Wait until kubelet reports containerd's ``lazyimage`` runtime handler on the node."""
    deadline = time.monotonic() + timeout
    while HANDLER not in runtime_handlers(node):
        assert time.monotonic() < deadline, runtime_handlers(node)
        time.sleep(_POLL)
