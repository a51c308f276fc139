"""The chart installed on the test node the way a user installs it: ``helm install`` of
charts/lazyimage with the image built from the Dockerfile, on a node whose containerd 2.x
imports the chart's drop-in.

What the test node differs in from a real one, and how each is met with the chart's own values:
- there is no kube-proxy, so the ``kubernetes`` Service does not answer: ``apiServer`` gives
  both pods the API server's loopback address, and both use the node's network;
- the registry is a plain-http one on loopback: ``agent.insecureRegistries``;
- the agent's state dir is under the test's tmp dir, which is not a shared mount as ``/`` is
  on a systemd host: it is bind-mounted onto itself and made shared, as Bidirectional
  propagation needs, and the drop-in names its paths.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from lazyimage.fusefs import abort_connection, mounts_under

from tests.fixtures.agent import AgentClient
from tests.fixtures.cgroups import CGROUP_ROOT
from tests.fixtures.cluster import KubeNode
from tests.fixtures.registry import free_port
from tests.integration.deploy.helm import CHART, Helm
from tests.integration.node.lazypods import DROPIN, node_dropin, wait_runtime_handler

__all__ = ["AGENT_LABEL", "ChartAgent", "ChartInstall"]

AGENT_LABEL = "app.kubernetes.io/component=agent"
_INSTALL_TIMEOUT = 300.0
_POLL = 0.5


class ChartAgent(AgentClient):
    """The agent pod of the installed chart, through its port (the node's network) and its
    control socket in the run dir on the node; its log is the pod's."""

    def __init__(self, install: ChartInstall) -> None:
        super().__init__(f"http://127.0.0.1:{install.agent_port}", install.run_dir / "control.sock")
        self._install = install

    def pod(self) -> dict[str, Any]:
        """The agent's pod (there is one node, so one pod, apart from one terminating)."""
        pods = self._install.kubectl_json("get", "pods", "-l", AGENT_LABEL)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 1, [p["metadata"]["name"] for p in pods]
        return dict(live[0])

    def log_text(self) -> str:
        name = self.pod()["metadata"]["name"]
        return self._install.kubectl("logs", name).stdout


class ChartInstall:
    """One release of the chart on ``node``, its agent's state under ``base``."""

    release = "lazyimage"
    namespace = "lazyimage-system"
    # The chart's object names (a release named like the chart is not repeated in them).
    agent_name = "lazyimage-agent"
    operator_name = "lazyimage-operator"

    def __init__(
        self,
        node: KubeNode,
        helm: Helm,
        base: Path,
        image: str,
        registry: str,
        overrides: dict[str, str] | None = None,
    ) -> None:
        """``overrides``: chart values set on top of the ones this node needs."""
        self.node = node
        self.overrides = dict(overrides or {})
        # Under the node's own cgroup root, which the node removes when it stops.
        self.holder_cgroup = f"{node.cgroup_root}/lazyimage-fuse-holder"
        self.helm = helm
        self.image = image
        self.registry = registry
        self.state_dir = base / "state"
        self.run_dir = base / "run"
        self.agent_port = free_port()
        self.operator_ports = (free_port(), free_port())
        self.agent = ChartAgent(self)
        self._shared = False

    # -- the node ------------------------------------------------------------------------------

    def prepare_node(self) -> None:
        """The state dir as a shared mount, the registry trusted, and containerd restarted with
        the chart's drop-in pointed at this release's paths."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(self.state_dir), str(self.state_dir))
        self._shared = True
        _run("mount", "--make-shared", str(self.state_dir))
        self.node.trust_registry(self.registry)
        dropin = node_dropin(
            DROPIN.read_text(),
            self.run_dir / "snapshotter.sock",
            self.state_dir / "snapshotter",
            self.node,
        )
        self.node.add_containerd_dropin("lazyimage", dropin)
        self.node.restart_containerd()
        wait_runtime_handler(self.node)

    def restore_node(self) -> None:
        """containerd without the drop-in, and nothing mounted under the state dir (FUSE
        connections aborted first: an unanswered one would hang the unmounts)."""
        for mount in mounts_under(self.state_dir):
            if mount.is_fuse:
                abort_connection(mount)
        for mount in reversed(mounts_under(self.state_dir)):
            subprocess.run(["umount", "-l", str(mount.mountpoint)], capture_output=True, timeout=30)
        self.wait_holder_gone()
        if self._shared:
            subprocess.run(["umount", "-l", str(self.state_dir)], capture_output=True, timeout=30)
            self._shared = False
        self.node.remove_containerd_dropin("lazyimage")
        self.node.restart_containerd()

    def holder_pids(self) -> list[int]:
        """The processes in the holder's cgroup (outside every pod)."""
        procs = CGROUP_ROOT / "pids" / self.holder_cgroup.strip("/") / "cgroup.procs"
        try:
            return [int(pid) for pid in procs.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_holder_gone(self, timeout: float = 30) -> None:
        """The holder exits once its connection ends (unmounted or aborted)."""
        deadline = time.monotonic() + timeout
        while pids := self.holder_pids():
            assert time.monotonic() < deadline, f"the FUSE holder is still running: {pids}"
            time.sleep(0.1)

    # -- helm ----------------------------------------------------------------------------------

    def values(self) -> list[str]:
        repository, _, tag = self.image.rpartition(":")
        settings = {
            "image.repository": repository,
            "image.tag": tag,
            "apiServer.host": "127.0.0.1",
            "apiServer.port": str(self.node.cluster.port),
            "agent.stateDir": str(self.state_dir),
            "agent.runDir": str(self.run_dir),
            "agent.hostNetwork": "true",
            "agent.port": str(self.agent_port),
            "agent.insecureRegistries": "{" + self.registry + "}",
            "agent.controlApi": "true",
            # What the registry serves is then what the pods and the prewarm asked for.
            "agent.backgroundFill": "false",
            "operator.hostNetwork": "true",
            "operator.healthPort": str(self.operator_ports[0]),
            "operator.metricsPort": str(self.operator_ports[1]),
            "operator.statusInterval": "1",
            "agent.holderCgroup": self.holder_cgroup,
            "agent.criSocket": str(self.node.containerd.socket),
            # An empty one of the test's own: the chart would mount (and create) the host's.
            "agent.registryConfig": str(self.run_dir.parent / "registry-config"),
            **self.overrides,
        }
        return [arg for name, value in settings.items() for arg in ("--set", f"{name}={value}")]

    def install(self) -> str:
        """``helm install --wait``: returns helm's output (NOTES included)."""
        done = self.helm_run(
            "install", self.release, str(CHART), "--create-namespace", "--wait",
            f"--timeout={int(_INSTALL_TIMEOUT)}s", *self.values(),
        )  # fmt: skip
        return done.stdout

    def upgrade(self, **changes: str) -> str:
        """``helm upgrade`` with ``changes`` on top of this release's values (no wait: the
        DaemonSet controller replaces the agent's pod as its update strategy says)."""
        self.overrides.update(changes)
        done = self.helm_run("upgrade", self.release, str(CHART), *self.values())
        return done.stdout

    def uninstall(self) -> str:
        done = self.helm_run("uninstall", self.release, "--wait", f"--timeout={_INSTALL_TIMEOUT}s")
        return done.stdout

    def helm_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm.run(
            *args,
            f"--kubeconfig={self.node.kubeconfig}",
            f"--namespace={self.namespace}",
            check=check,
            timeout=_INSTALL_TIMEOUT + 60,
        )

    # -- the cluster ---------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl("-n", self.namespace, *args, check=check)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def wait_agent_ready(self, timeout: float = _INSTALL_TIMEOUT) -> dict[str, Any]:
        """Wait for an agent pod that is Ready (a new one after a restart); return it."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.kubectl_json("get", "pods", "-l", AGENT_LABEL)["items"]
            for pod in pods:
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
                if conditions.get("Ready") == "True":
                    return dict(pod)
            if time.monotonic() > deadline:
                events = self.kubectl("get", "events", check=False).stdout
                raise AssertionError(f"no agent pod Ready after {timeout} s: {pods}\n{events}")
            time.sleep(_POLL)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
