"""The story, on this machine: a registry, the images, the one-node cluster with the chart
installed, a prewarmed lazy pod and the same image pulled in full, what each cost, and
everything torn down again.

It starts each component with the class the tests start it with (tests/fixtures,
tests/integration/node/chart.py), so the demo runs what the tests check.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.cluster import KubeNode
from tests.fixtures.gotools import go_tool
from tests.fixtures.images import BUILD_TIMEOUT, ensure_image
from tests.fixtures.project_image import IMAGE_BUILD_TIMEOUT, build_project_image
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_OUTPUT
from tests.images._proc import CommandError
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes
from tests.integration.convert.cli import lazyimage
from tests.integration.cri.helpers import RegistryImage, read_image
from tests.integration.deploy.helm import Helm, poll
from tests.integration.node.chart import AGENT_LABEL, ChartInstall
from tests.integration.node.lazypods import (
    HANDLER,
    POD_TIMEOUT,
    content_digests,
    lazy_probe,
    pod_containers,
    probe_pod,
    remove_lazy_pods,
    remove_lazy_snapshots,
    run_pod,
    write_startup_listing,
)
from tests.story.phases import Steps
from tests.story.report import PodRun, first_line_time, human_bytes, side_by_side

__all__ = ["Story", "StoryError"]

NAMESPACE = "demo"
LAZY_REPOSITORY = "demo/python"
# The same eStargz image under a second name: a pod of it pulls through containerd's own
# snapshotter, which holds nothing of the first name's lazy pull.
FULL_REPOSITORY = "demo/python-full"
_STATUS_TIMEOUT = 120.0
# The lines of scripts/build-image's output that say where it is: its own, and buildah's steps.
_BUILD_MILESTONE = re.compile(r"^(build-image: |\[\d+/\d+\] (STEP|COMMIT) )")


class StoryError(Exception):
    """The story found something other than what it shows."""


def _indent(line: str) -> None:
    print(f"    | {line}", flush=True)


class Story:
    """Everything under ``workdir``, step by step with ``steps``; run() then teardown()."""

    def __init__(self, workdir: Path, steps: Steps) -> None:
        self.workdir = workdir
        self.steps = steps
        self.say = steps.say
        self.registry: RegistryServer | None = None
        self.node: KubeNode | None = None
        self.install: ChartInstall | None = None
        self.lazy: RegistryImage | None = None
        self.full: RegistryImage | None = None

    # -- the story -----------------------------------------------------------------------------

    def run(self) -> list[PodRun]:
        chart_image = self.build_images()
        install = self.start_cluster(chart_image)
        runs = [self.run_lazy_pod(install), self.run_full_pod(install)]
        self.say("")
        self.say(side_by_side(runs))
        self.say("")
        self.show_lazy_images(install)
        return runs

    def build_images(self) -> str:
        """The registry with the chart's image and the python image, gzip and eStargz."""
        step = self.steps.step
        with step("start a registry", 60):
            registry = self.registry = RegistryServer(self.workdir / "registry").start()
            self.say(f"    registry at {registry.url}")
        with step(
            "build the python test image from Debian packages (once, then cached)",
            BUILD_TIMEOUT + 60,
        ):
            python = ensure_image("python", timeout=BUILD_TIMEOUT)
        with step(
            "build the lazyimage image from the Dockerfile (cached by its inputs) and push it",
            IMAGE_BUILD_TIMEOUT + 420,
        ):
            chart_image = self._build_chart_image(registry)
        with step("push the python image and convert it to eStargz, startup files first", 900):
            listing = write_startup_listing(self.workdir / "startup.txt")
            converted = push_estargz(
                python, registry, LAZY_REPOSITORY, "--prioritize-from", str(listing)
            )
            self.lazy = read_image(registry, converted.ref)
            full_ref = f"{registry.host}/{FULL_REPOSITORY}:esgz"
            copied = lazyimage(
                "copy", converted.ref, full_ref, "--insecure-registry", registry.host
            )
            if copied.code != 0:
                raise StoryError(f"lazyimage copy {converted.ref} {full_ref}: {copied.err}")
            self.full = read_image(registry, full_ref)
            size = human_bytes(sum(layer.size for layer in self.lazy.manifest.layers))
            self.say(f"    {converted.ref} and {full_ref}: {len(self.lazy.layers)} layers, {size}")
        return chart_image

    def _build_chart_image(self, registry: RegistryServer) -> str:
        """scripts/build-image, its output in build-image.log; only its steps are shown."""
        log_path = self.workdir / "build-image.log"
        tail: collections.deque[str] = collections.deque(maxlen=40)
        with log_path.open("w") as log:

            def on_line(line: str) -> None:
                log.write(line + "\n")
                tail.append(line)
                if _BUILD_MILESTONE.match(line):
                    _indent(line if len(line) <= 100 else line[:97] + "...")

            try:
                return build_project_image(registry.host, on_line=on_line)
            except CommandError as exc:
                lines = "\n".join(tail)
                raise StoryError(f"{exc}; its output is in {log_path}, ending:\n{lines}") from None

    def start_cluster(self, chart_image: str) -> ChartInstall:
        """The node, its containerd configured for the chart, and the chart installed."""
        assert self.registry is not None
        step = self.steps.step
        with step("start the one-node cluster (kubelet 1.34 on containerd 2.4)", 480):
            self.node = KubeNode(self.workdir / "node")
            self.node.start()
            took = ", ".join(f"{what} {secs:.1f} s" for what, secs in self.node.timings.items())
            self.say(f"    {took}")
        node = self.node
        with step("give containerd the chart's drop-in and restart it", 300):
            helm = Helm(go_tool("helm"), self.workdir / "helm-home")
            base = self.workdir / "chart"
            install = ChartInstall(node, helm, base, chart_image, self.registry.host)
            self.install = install
            install.prepare_node()
            node.create_namespace(NAMESPACE)
        with step(f"helm install the chart with {chart_image}", 660):
            install.install()
            install.wait_agent_ready()
            install.kubectl("rollout", "status", f"deployment/{install.operator_name}")
        return install

    def run_lazy_pod(self, install: ChartInstall) -> PodRun:
        """A pod as a user writes it: prewarmed, of the RuntimeClass ``lazyimage``."""
        assert self.registry is not None and self.lazy is not None
        node, image = install.node, self.lazy
        # The copy to the second name read these layers; count only what the pods cause.
        self.registry.clear_access_log()
        with self.steps.step("run a prewarmed lazy pod", POD_TIMEOUT + 60):
            run = self._timed_pod("prewarmed lazy pod", lazy_probe("lazy", image.ref), image)
            snapshotters = {c["Snapshotter"] for c in pod_containers(node, NAMESPACE, "lazy")}
            if snapshotters != {HANDLER}:
                raise StoryError(f"the lazy pod ran on the snapshotters {snapshotters}")
        return run

    def run_full_pod(self, install: ChartInstall) -> PodRun:
        """The same image without the RuntimeClass: containerd downloads and unpacks it all.
        (``Always``: a pod without the RuntimeClass must not take a lazily pulled image as
        present; README, "With containerd 2.x and a RuntimeClass".)"""
        assert self.full is not None
        node, image = install.node, self.full
        pod = probe_pod("full", image.ref)
        pod["spec"]["containers"][0]["imagePullPolicy"] = "Always"
        with self.steps.step("run the same image with a full pull", POD_TIMEOUT + 60):
            run = self._timed_pod("full pull", pod, image)
            snapshotters = {c["Snapshotter"] for c in pod_containers(node, NAMESPACE, "full")}
            layers = {layer.digest for layer in image.layers}
            if snapshotters != {"overlayfs"} or not layers <= content_digests(node):
                raise StoryError(
                    f"the full pull was not one: snapshotters {snapshotters}, layers missing "
                    f"from containerd's content store: {sorted(layers - content_digests(node))}"
                )
            if run.layer_bytes < run.image_bytes:
                raise StoryError(
                    f"the full pull fetched {run.layer_bytes} of the layers' {run.image_bytes} "
                    "bytes"
                )
        return run

    def _timed_pod(self, label: str, pod: dict[str, Any], image: RegistryImage) -> PodRun:
        """Run ``pod``; its cold start is from just before `kubectl create` to the time kubelet
        stamped on its first log line (one clock: this host's)."""
        assert self.node is not None and self.registry is not None
        name = str(pod["metadata"]["name"])
        created = time.time()
        lines = run_pod(self.node, NAMESPACE, pod)
        if lines != [PYTHON_PROBE_OUTPUT]:
            raise StoryError(f"pod {name} printed {lines}, not {[PYTHON_PROBE_OUTPUT]}")
        logged = self.node.kubectl("logs", "-n", NAMESPACE, name, "--timestamps").stdout
        repository = image.ref.partition("/")[2].rpartition(":")[0]
        digests = [layer.digest for layer in image.layers]
        return PodRun(
            label=label,
            created=created,
            first_line=first_line_time(logged),
            layer_bytes=registry_bytes(self.registry, digests, repository),
            image_bytes=sum(layer.size for layer in image.layers),
        )

    def show_lazy_images(self, install: ChartInstall) -> None:
        """``kubectl get lazyimages -o wide`` once the node reports the lazy image warm."""
        assert self.lazy is not None
        ref, node = self.lazy.ref, install.node

        def not_warm() -> str | None:
            for item in node.kubectl_json("get", "lazyimages")["items"]:
                if item["spec"]["image"] == ref:
                    status = item.get("status") or {}
                    return None if status.get("summary") == "1/1" else f"status {status}"
            return f"no LazyImage of {ref}"

        with self.steps.step("wait for the operator's report of the node", _STATUS_TIMEOUT + 30):
            poll(f"the LazyImage of {ref} shows the node ready", not_warm, _STATUS_TIMEOUT)
        self.say("$ kubectl get lazyimages -o wide")
        self.say(node.kubectl("get", "lazyimages", "-o", "wide").stdout.rstrip())

    # -- after a failure -----------------------------------------------------------------------

    def keep_logs(self, failure: BaseException) -> None:
        """What a failure leaves to read: the traceback and the chart pods' logs (they go with
        the node)."""
        (self.workdir / "failure.txt").write_text("".join(traceback.format_exception(failure)))
        install = self.install
        if install is None:
            return
        for label, selector in (
            ("agent", AGENT_LABEL),
            ("operator", "app.kubernetes.io/component=operator"),
        ):
            with contextlib.suppress(Exception):
                logs = install.kubectl("logs", "-l", selector, "--tail=-1", check=False)
                (self.workdir / f"{label}.log").write_text(logs.stdout + logs.stderr)

    # -- teardown ------------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Remove everything run() made, in the order the components need; each step is tried
        whatever the others did. Returns what went wrong."""
        problems: list[str] = []

        def attempt(title: str, limit: float, action: Callable[[], object]) -> None:
            try:
                with self.steps.step(title, limit):
                    action()
            except Exception as exc:
                problems.append(f"{title}: {exc}")
                self.say(f"    failed: {exc}")

        install, node = self.install, self.node
        if install is not None and node is not None and self._deployed(install):

            def remove_pods() -> None:
                if self.lazy is not None:
                    remove_lazy_pods(node, NAMESPACE, self.lazy.ref)
                remove_lazy_snapshots(node)

            # The lazy pods' snapshots go while the agent still serves them, and the
            # LazyImages while the operator is there to remove its finalizer from them.
            attempt("remove the pods while the agent serves them", 300, remove_pods)
            attempt(
                "delete the LazyImages while the operator runs",
                120,
                lambda: node.kubectl("delete", "lazyimages", "--all", "--timeout=90s"),
            )
            attempt("helm uninstall", 420, install.uninstall)
        if install is not None:
            attempt("take the drop-in out of containerd's config", 300, install.restore_node)
        if node is not None:
            attempt("stop the node", 300, lambda: self._stop_node(node, problems))
        if self.registry is not None:
            attempt("stop the registry", 60, self.registry.stop)
        return problems

    def _deployed(self, install: ChartInstall) -> bool:
        with contextlib.suppress(Exception):
            return install.helm_run("status", install.release, check=False).returncode == 0
        return False

    def _stop_node(self, node: KubeNode, problems: list[str]) -> None:
        node.stop()
        left = node.leftovers()
        if left:
            problems.append(f"the node left behind: {left}")
