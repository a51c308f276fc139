"""The user's path, end to end, on a real node: ``helm install`` of the chart with the image
built from the Dockerfile, onto the one-node cluster (kubelet 1.34, containerd 2.4 importing the
chart's drop-in). A pod annotated for prewarm, of the RuntimeClass ``lazyimage``, runs from
lazily mounted layers; the node's agent began its prefetch, and pulled the image through
containerd's CRI socket, before kubelet asked for it; ``kubectl get li`` shows the node warm;
a pod whose lazy loading fails still starts and says why; the agent comes back after its pod
is deleted, after containerd restarts and after the chart is reinstalled; ``helm uninstall``
leaves only the CRDs (and their objects).

The tests run in file order and share one release (chart.py says how the test node is met).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lazyimage import names
from lazyimage.oci import sha256_digest

from tests.fixtures.cluster import KubeNode
from tests.fixtures.gotools import BUILD_TIMEOUT, go_tool
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.project_image import IMAGE_BUILD_TIMEOUT
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes
from tests.integration.cri.helpers import (
    RegistryImage,
    layer_bytes,
    read_image,
    snapshot_results,
    write_image,
)
from tests.integration.deploy.helm import Helm
from tests.integration.node.chart import ChartInstall
from tests.integration.node.lazypods import (
    HANDLER,
    content_digests,
    lazy_probe,
    pod_containers,
    remove_lazy_pods,
    remove_lazy_snapshots,
    rfc3339_seconds,
    run_pod,
    write_startup_listing,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(int(BUILD_TIMEOUT) + IMAGE_BUILD_TIMEOUT + IMAGE_TEST_TIMEOUT + 900),
]

CRDS = ("lazyimages.lazyimage.io", "lazyimagenodes.lazyimage.io")
_STATUS_TIMEOUT = 120.0
_POLL = 0.5


@dataclasses.dataclass
class Story:
    """What the tests share: the release, a namespace for their pods, and the images."""

    install: ChartInstall
    namespace: str
    registry: RegistryServer
    image: RegistryImage  # the eStargz python image
    prefix: str  # of the repositories the tests push
    refs: list[str]  # every image the pods ran, removed through CRI at the end


@pytest.fixture(scope="module")
def story(
    kube_node: KubeNode,
    shared_registry: RegistryServer,
    lazyimage_image: str,
    python_image: TestImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Story]:
    base = tmp_path_factory.mktemp("chart-node")
    helm = Helm(go_tool("helm"), base / "helm-home")
    install = ChartInstall(kube_node, helm, base, lazyimage_image, shared_registry.host)
    # Its priority zone holds what the probe imports: what a prewarm fetches ahead of the pod.
    listing = write_startup_listing(base / "startup.txt")
    prefix = f"helm-{secrets.token_hex(3)}"
    converted = push_estargz(
        python_image, shared_registry, f"{prefix}/python", "--prioritize-from", str(listing)
    )
    namespace = f"lazy-{secrets.token_hex(3)}"
    story = Story(
        install, namespace, shared_registry, read_image(shared_registry, converted.ref), prefix, []
    )
    install.prepare_node()
    try:
        kube_node.create_namespace(namespace)
        yield story
    finally:
        _teardown(story)


def _teardown(story: Story) -> None:
    install, node = story.install, story.install.node
    deployed = install.helm_run("status", install.release, check=False).returncode == 0
    try:
        if deployed:
            # The lazy pods' snapshots go while the agent still serves them.
            for ref in story.refs:
                remove_lazy_pods(node, story.namespace, ref)
            remove_lazy_snapshots(node)
            install.uninstall()
    finally:
        try:
            node.kubectl("delete", "namespace", story.namespace, "--wait=false", check=False)
            _delete_crds(node)
        finally:
            install.restore_node()


def _delete_crds(node: KubeNode) -> None:
    """The CRDs and their objects, whose finalizers no operator removes any more."""
    for plural in ("lazyimages", "lazyimagenodes"):
        listed = node.kubectl("get", plural, "-o", "name", check=False).stdout.split()
        for name in listed:
            node.kubectl(
                "patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                check=False,
            )  # fmt: skip
    node.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--timeout=60s", check=False)


def lazy_image_row(install: ChartInstall, ref: str) -> dict[str, Any]:
    """The LazyImage the operator keeps for ``ref``."""
    items = install.node.kubectl_json("get", "lazyimages")["items"]
    found = [item for item in items if item["spec"]["image"] == ref]
    assert len(found) == 1, [item["spec"]["image"] for item in items]
    return dict(found[0])


def wait_lazy_image(install: ChartInstall, ref: str, done: Any) -> dict[str, Any]:
    """Poll the LazyImage of ``ref`` until ``done(status)``; return it."""
    deadline = time.monotonic() + _STATUS_TIMEOUT
    while True:
        items = install.node.kubectl_json("get", "lazyimages")["items"]
        found = [item for item in items if item["spec"]["image"] == ref]
        if found and done(found[0].get("status") or {}):
            return dict(found[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"LazyImage of {ref} not as expected: {found}")
        time.sleep(_POLL)


def pull_started(node: KubeNode, ref: str) -> float:
    """When the first PullImage of ``ref`` reached containerd (its log's first such line)."""
    needle = f'msg="PullImage \\"{ref}\\""'
    for line in node.containerd.log_path.read_text(errors="replace").splitlines():
        if needle in line:
            return rfc3339_seconds(line.split('"', 2)[1])
    raise AssertionError(f"containerd logged no PullImage of {ref}")


def test_install_brings_up_agent_and_operator(story: Story) -> None:
    install = story.install
    output = install.install()
    assert "STATUS: deployed" in output, output
    pod = install.wait_agent_ready()
    assert pod["spec"]["nodeName"] == install.node.name
    install.kubectl("rollout", "status", f"deployment/{install.operator_name}")
    # The agent's own pod is on containerd's default snapshotter: it never needs itself.
    agent_containers = pod_containers(install.node, install.namespace, pod["metadata"]["name"])
    assert agent_containers
    assert {c["Snapshotter"] for c in agent_containers} == {"overlayfs"}
    assert install.agent.request("GET", "/readyz") == "ready\n"
    install.node.kubectl("get", "runtimeclass", HANDLER)


def test_prewarmed_pod_runs_lazily_and_the_node_shows_warm(
    story: Story, record_property: Any
) -> None:
    install, node, image, registry = story.install, story.install.node, story.image, story.registry
    story.refs.append(image.ref)
    registry.clear_access_log()
    log_mark = node.containerd.log_path.stat().st_size
    assert run_pod(node, story.namespace, lazy_probe("warm", image.ref)) == [PYTHON_PROBE_OUTPUT]
    assert {c["Snapshotter"] for c in pod_containers(node, story.namespace, "warm")} == {HANDLER}

    # Lazily: every layer mounted by the agent, none in containerd's content store, and the
    # registry served no more than the zones, the TOCs and 1.2x what was read.
    agent = install.agent
    results = snapshot_results(agent, image)
    assert all(r is not None and r["remote_snapshot_prepared"] is True for r in results), results
    layers = [layer.digest for layer in image.layers]
    held = content_digests(node)
    assert not set(layers) & held, "containerd downloaded layers of a lazy pod"
    for layer in image.layers:
        counted = layer_bytes(registry, agent, layer)
        print(f"prewarmed pod, layer {counted.describe()}")
        assert counted.served <= counted.budget, counted.describe()
    served = registry_bytes(registry, layers)
    compressed = sum(layer.size for layer in image.layers)
    print(f"prewarmed lazy pod: registry served {served} of the layers' {compressed} bytes")
    record_property("lazy_layer_bytes", served)
    assert served < compressed / 2

    # The head start: the agent's prefetch began before the image's first PullImage reached
    # containerd. With the chart's agent.criSocket that first pull is the agent's own, so
    # kubelet's check finds the image present, or its pull joins one already under way.
    pulled = [
        e for e in agent.log_events() if e.get("event") == "image_pulled"
        and e.get("image") == image.ref
    ]  # fmt: skip
    assert pulled, agent.log()
    ordered = [
        e for e in agent.log_events() if e.get("event") == "prefetch_ordered"
        and e.get("image") == image.ref
    ]  # fmt: skip
    assert ordered, agent.log()
    prefetch_began = rfc3339_seconds(ordered[0]["timestamp"])
    with node.containerd.log_path.open("rb") as log:
        log.seek(log_mark)
        pulls = log.read().count(f'msg="PullImage \\"{image.ref}\\""'.encode())
    print(f"PullImage calls of the image: {pulls} (kubelet's own only if it asked first)")
    record_property("pull_image_calls", pulls)
    assert pulls >= 1
    head_start = pull_started(node, image.ref) - prefetch_began
    print(f"prefetch began {head_start:.3f} s before the first PullImage reached containerd")
    record_property("prewarm_head_start_seconds", round(head_start, 3))
    assert head_start > 0, head_start

    # kubectl get li: the node ready, with cache hits from the pod's reads.
    warm = wait_lazy_image(
        install, image.ref, lambda s: s.get("summary") == "1/1" and s.get("cacheHits", 0) > 0
    )
    table = node.kubectl("get", "lazyimages", "-o", "wide").stdout
    print(table)
    (row,) = [line.split() for line in table.splitlines() if image.ref in line]
    assert row[2] == "1/1", table
    assert int(row[4]) == warm["status"]["cacheHits"] > 0, table
    assert int(row[3]) == warm["status"]["fetchedBytes"] > 0, table  # the zones, ahead


def test_a_pod_whose_lazy_loading_fails_starts_and_says_why(
    story: Story, python_v2_image: TestImage
) -> None:
    install, node, registry = story.install, story.install.node, story.registry
    # Another python layer (the node holds the first one's snapshots, whatever the TOC).
    converted = read_image(
        registry, push_estargz(python_v2_image, registry, f"{story.prefix}/python-v2").ref
    )
    bad = 1
    layers = list(converted.layers)
    wrong = sha256_digest(b"not the TOC of this layer")
    layers[bad] = dataclasses.replace(
        layers[bad], annotations={**layers[bad].annotations, names.TOC_DIGEST_ANNOTATION: wrong}
    )
    image = write_image(
        registry,
        f"{converted.ref.rpartition(':')[0]}:wrong-toc",
        dataclasses.replace(converted.manifest, layers=layers),
        converted.config,
    )
    story.refs.append(image.ref)
    # It starts, the refused layer downloaded and unpacked by containerd.
    assert run_pod(node, story.namespace, lazy_probe("refused", image.ref)) == [PYTHON_PROBE_OUTPUT]
    assert image.layers[bad].digest in content_digests(node)
    refused = snapshot_results(install.agent, image)[bad]
    assert refused is not None and refused["remote_snapshot_prepared"] is False, refused
    # And the user sees why, without the agent's log: the node's prewarm Failed, with the TOC.
    failed = wait_lazy_image(install, image.ref, lambda s: s.get("failed", 0) == 1)
    (node_status,) = failed["status"]["nodeStatuses"]
    assert node_status["state"] == "Failed"
    assert "TOC" in node_status["message"], node_status
    table = node.kubectl("get", "lazyimages").stdout
    (row,) = [line.split() for line in table.splitlines() if image.ref in line]
    assert row[2:5] == ["0/1", "(1", "failed)"], table
    described = node.kubectl("describe", "lazyimage", failed["metadata"]["name"]).stdout
    assert "TOC" in described, described


def _new_lazy_pod_runs(story: Story, name: str) -> None:
    """A new pod of the image, which the node holds already (no pull): the restarted agent
    serves its committed snapshots."""
    pod = lazy_probe(name, story.image.ref)
    assert run_pod(story.install.node, story.namespace, pod) == [PYTHON_PROBE_OUTPUT]
    containers = pod_containers(story.install.node, story.namespace, name)
    assert {c["Snapshotter"] for c in containers} == {HANDLER}


def test_agent_comes_back_when_its_pod_is_deleted(story: Story) -> None:
    install = story.install
    old = install.agent.pod()["metadata"]["uid"]
    install.kubectl("delete", "pod", install.agent.pod()["metadata"]["name"], "--wait=true")
    new = install.wait_agent_ready()
    assert new["metadata"]["uid"] != old
    _new_lazy_pod_runs(story, "after-agent-pod")


def test_agent_survives_a_containerd_restart(story: Story) -> None:
    install = story.install
    before = install.agent.pod()["metadata"]["uid"]
    install.node.restart_containerd()
    assert install.wait_agent_ready()["metadata"]["uid"] == before
    _new_lazy_pod_runs(story, "after-containerd")


def test_uninstall_leaves_the_crds_and_a_reinstall_serves_again(story: Story) -> None:
    install, node = story.install, story.install.node
    # Pods go before the agent that serves their layers, as a user would drain them.
    for ref in story.refs:
        remove_lazy_pods(node, story.namespace, ref)
    remove_lazy_snapshots(node)
    install.uninstall()
    for kind, name in (
        ("daemonset", install.agent_name),
        ("deployment", install.operator_name),
    ):
        gone = install.kubectl("get", kind, name, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr
    for cluster_scoped in (
        ("clusterrole", install.operator_name),
        ("runtimeclass", HANDLER),
    ):
        gone = node.kubectl("get", *cluster_scoped, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr
    # helm never deletes the CRDs it installed from crds/, nor the objects in them.
    node.kubectl("get", "crd", *CRDS)
    assert node.kubectl_json("get", "lazyimagenodes")["items"]
    # The operator released its finalizer as it stopped: they can go without it.
    left = node.kubectl_json("get", "lazyimages")["items"]
    assert left and not any(item["metadata"].get("finalizers") for item in left), left
    node.kubectl("delete", "lazyimages", "--all", "--timeout=60s")

    install.install()
    install.wait_agent_ready()
    pod = lazy_probe("reinstalled", story.image.ref)
    assert run_pod(node, story.namespace, pod) == [PYTHON_PROBE_OUTPUT]
