"""Credentials as the kubernetes package loads them, against a real kube-apiserver: an exec
credential plugin's token, run again after the server refuses one (for a request and for a
watch); a pod's rotated service account token read again after a 401; kubeconfig files
merged from $KUBECONFIG; and the operator, whose kopf login and own
client share one source, started with an exec plugin whose first token is refused, and
stopped at once by credentials it cannot load."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from lazyimage.kube import KubeClient, KubeConfig, ResourcePath
from lazyimage.kube._source import InCluster

from tests.fixtures.kube import KubeCluster
from tests.fixtures.kube_exec import ExecPlugin, kubeconfig_doc
from tests.fixtures.operator import OperatorProcess
from tests.integration.operator.helpers import create, get_json, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.timeout(180),
    # Closing a watch before its stream ends leaves httpx 0.28's and httpcore's nested body
    # generators to the garbage collector, which trio reports (encode/httpx#3686).
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpx\.:ResourceWarning"),
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpcore\.:ResourceWarning"),
]

REVIEWS = ResourcePath("authentication.k8s.io", "v1", "selfsubjectreviews")
TIMEOUT = 60
# RBAC is read from an informer cache: a new binding takes a moment to apply.
PROPAGATION_TIMEOUT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent's event loop


def _service_account_token(cluster: KubeCluster, namespace: str, name: str) -> str:
    """A 24 h TokenRequest token of a new ServiceAccount ``namespace/name``."""
    kubeconfig = json.loads(cluster.service_account_kubeconfig(namespace, name).read_text())
    token: str = kubeconfig["users"][0]["user"]["token"]
    return token


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _exec_kubeconfig(cluster: KubeCluster, path: Path, plugin: ExecPlugin) -> Path:
    return _write(path, kubeconfig_doc(cluster.server, plugin.user(), ca_file=cluster.ca_file))


async def _whoami(client: KubeClient) -> str:
    review = await client.create(
        REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    name: str = review["status"]["userInfo"]["username"]
    return name


def _refused(cluster: KubeCluster, token: str) -> bool:
    """Whether the API server now answers ``token`` with 401."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    verify = ssl.create_default_context(cafile=str(cluster.ca_file))
    with httpx.Client(verify=verify, trust_env=False, timeout=10) as http:
        answer = http.post(
            f"{cluster.server}{REVIEWS.collection()}",
            json=review,
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.status_code == 401


def _poll(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


async def test_exec_plugin_token(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    token = _service_account_token(kube_cluster, kube_namespace, "robot")
    plugin = ExecPlugin(tmp_path / "plugin", [token])
    config = KubeConfig.from_kubeconfig(_exec_kubeconfig(kube_cluster, tmp_path / "kc", plugin))
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            assert await _whoami(client) == f"system:serviceaccount:{kube_namespace}:robot"
    assert plugin.runs == 1


async def test_a_refused_token_runs_the_plugin_again_for_requests_and_watches(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    user = f"system:serviceaccount:{kube_namespace}:watcher"
    token = _service_account_token(kube_cluster, kube_namespace, "watcher")
    # A Role of its own: the aggregated ClusterRole "view" stays empty with no controller
    # manager to fill it.
    kube_cluster.kubectl(
        "create", "role", "watcher", "--verb=get,list,watch", "--resource=configmaps",
        "-n", kube_namespace,
    )  # fmt: skip
    kube_cluster.kubectl(
        "create", "rolebinding", "watcher", "--role=watcher",
        f"--serviceaccount={kube_namespace}:watcher", "-n", kube_namespace,
    )  # fmt: skip
    kube_cluster.kubectl("create", "configmap", "seen", "-n", kube_namespace)
    _poll(
        "the watcher's RoleBinding to apply",
        lambda: kube_cluster.kubectl(
            "auth", "can-i", "watch", "configmaps", "-n", kube_namespace, f"--as={user}",
            check=False,
        ).stdout.strip() == "yes",
        PROPAGATION_TIMEOUT,
    )  # fmt: skip
    # The first token is refused (401), as an expired one would be.
    plugin = ExecPlugin(tmp_path / "plugin", ["not-a-valid-token", token, "unused"])
    config = KubeConfig.from_kubeconfig(_exec_kubeconfig(kube_cluster, tmp_path / "kc", plugin))
    assert plugin.runs == 1
    configmaps = ResourcePath("", "v1", "configmaps", namespace=kube_namespace)
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            # A watch is a streamed answer: refused, renewed and sent again all the same.
            async with aclosing(client.watch(configmaps, timeout_seconds=30)) as events:
                first = await anext(events)
            assert (first.type, first.object["metadata"]["name"]) == ("ADDED", "seen")
            assert plugin.runs == 2
            assert await _whoami(client) == user
    assert plugin.runs == 2  # the new token is kept while the server takes it


async def test_in_cluster_token_file_read_again_after_a_401(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    """A pod's service account, as kubelet mounts it: the token file rotates; a token the
    server no longer takes (its ServiceAccount deleted) sends the client to read it again."""
    old = _service_account_token(kube_cluster, kube_namespace, "old")
    new = _service_account_token(kube_cluster, kube_namespace, "new")
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "ca.crt").write_bytes(kube_cluster.ca_file.read_bytes())
    (mounted / "token").write_text(old)
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube_cluster.port),
    }
    config = KubeConfig.from_source(InCluster(environ, mounted))
    assert config.server == kube_cluster.server
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            assert await _whoami(client) == f"system:serviceaccount:{kube_namespace}:old"
            (mounted / "token").write_text(new)
            kube_cluster.kubectl("delete", "serviceaccount", "old", "-n", kube_namespace)
            await anyio.to_thread.run_sync(
                _poll,
                "the deleted ServiceAccount's token to be refused",
                lambda: _refused(kube_cluster, old),
                PROPAGATION_TIMEOUT,
            )
            assert await _whoami(client) == f"system:serviceaccount:{kube_namespace}:new"


async def test_kubeconfig_files_merged_from_the_environment(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cluster and context in one file, the user in another; the first file's
    current-context wins over the second's, and a missing file is skipped, as in kubectl."""
    token = _service_account_token(kube_cluster, kube_namespace, "merged")
    first = kubeconfig_doc(kube_cluster.server, {}, ca_file=kube_cluster.ca_file, name="test")
    first["contexts"][0]["context"]["user"] = "merged-user"
    first["users"] = []
    second = kubeconfig_doc("https://127.0.0.1:1", {"token": "wrong"}, name="elsewhere")
    second["users"].append({"name": "merged-user", "user": {"token": token}})
    paths = [
        tmp_path / "absent",
        _write(tmp_path / "one" / "config", first),
        _write(tmp_path / "two" / "config", second),
    ]
    monkeypatch.setenv("KUBECONFIG", ":".join(str(p) for p in paths))
    config = await KubeConfig.load_async()
    assert config.server == kube_cluster.server
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            assert await _whoami(client) == f"system:serviceaccount:{kube_namespace}:merged"


def test_the_operator_logs_in_with_an_exec_plugin(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    tmp_path: Path,
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    """kopf's login and the operator's own client both take their token from the plugin; the
    first one is refused, and renewing it runs the plugin once for both."""
    cluster = lazyimage_crds
    name = f"exec-{secrets.token_hex(3)}"
    token = _service_account_token(cluster, kube_namespace, name)
    cluster.kubectl(
        "create", "clusterrolebinding", name, "--clusterrole=cluster-admin",
        f"--serviceaccount={kube_namespace}:{name}",
    )  # fmt: skip
    try:
        user = f"system:serviceaccount:{kube_namespace}:{name}"
        _poll(
            "the operator's ClusterRoleBinding to apply",
            lambda: cluster.kubectl(
                "auth", "can-i", "watch", "lazyimages", f"--as={user}", check=False
            ).stdout.strip() == "yes",
            PROPAGATION_TIMEOUT,
        )  # fmt: skip
        plugin = ExecPlugin(tmp_path / "plugin", ["not-a-valid-token", token, "unused"])
        operator = operator_factory(_exec_kubeconfig(cluster, tmp_path / "kc", plugin))
        create(cluster, {
            "apiVersion": "lazyimage.io/v1alpha1", "kind": "LazyImage",
            "metadata": {"name": name}, "spec": {"image": f"reg.example/{name}/app:1"},
        })  # fmt: skip
        try:
            # kopf sees the LazyImage (its watch), the operator's client writes its status.
            wait_for(
                "the LazyImage's status from the operator",
                lambda: ((get_json(cluster, "lazyimage", name) or {}).get("status") or {}).get(
                    "summary"
                ),
                TIMEOUT,
                operator.log,
            )
        finally:
            cluster.kubectl("delete", "lazyimage", name, "--wait=false", check=False)
        assert operator.running(), operator.log()
        assert plugin.runs == 2, operator.log()
    finally:
        cluster.kubectl("delete", "clusterrolebinding", name, check=False)


@pytest.mark.anyio(False)
def test_the_operator_stops_at_once_on_credentials_it_cannot_load(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled"
    garbled.write_text("clusters: [unclosed\n")
    plugin = ExecPlugin(tmp_path / "plugin", [], fail="error: the SSO session has expired")
    failing = _write(tmp_path / "failing", kubeconfig_doc("https://127.0.0.1:1", plugin.user()))
    cases = [
        (tmp_path / "absent", "no such file"),
        (garbled, "not valid YAML"),
        (failing, "exec: process returned 1. error: the SSO session has expired"),
    ]
    repo = Path(__file__).resolve().parents[3]
    pythonpath = os.pathsep.join(str(repo / part) for part in ("nodeagent", "operator"))
    for kubeconfig, reason in cases:
        done = subprocess.run(
            [sys.executable, "-m", "lazyimage_operator.main", "--kubeconfig", str(kubeconfig)],
            env={**os.environ, "PYTHONPATH": pythonpath},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 7, done.stderr
        assert f"(exit code 7): kubeconfig {kubeconfig}" in done.stderr
        assert reason in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
