"""The control-plane fixture against the real etcd and kube-apiserver it starts.

These check what the operator and agent tests rely on: the pinned version, the admin
kubeconfig, client-certificate users that RBAC actually restricts, and ServiceAccount tokens
from the TokenRequest API.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.kube import KubeCluster, KubectlError, KubeStartError, KubeUser
from tests.fixtures.registry import free_port

pytestmark = [pytest.mark.integration]

KUBE_VERSION = "v1.34.4"
# The RBAC authorizer reads roles from an informer cache, so a new binding takes a moment.
RBAC_PROPAGATION_TIMEOUT = 20.0


def _poll_kubectl_ok(cluster: KubeCluster, user: KubeUser, *args: str) -> str:
    """Retry ``kubectl ARGS`` as ``user`` until it succeeds; return its stdout."""
    deadline = time.monotonic() + RBAC_PROPAGATION_TIMEOUT
    while True:
        proc = cluster.kubectl(*args, kubeconfig=user.kubeconfig, check=False)
        if proc.returncode == 0:
            return proc.stdout
        if time.monotonic() > deadline:
            pytest.fail(f"kubectl {' '.join(args)} as {user.name} still fails: {proc.stderr}")
        time.sleep(0.2)


def test_version_is_pinned(kube_cluster: KubeCluster) -> None:
    with kube_cluster.http_client() as client:
        response = client.get("/version")
    assert response.status_code == 200, response.text
    assert response.json()["gitVersion"] == KUBE_VERSION
    client_version = json.loads(kube_cluster.kubectl("version", "--client", "-o", "json").stdout)
    assert client_version["clientVersion"]["gitVersion"] == KUBE_VERSION


def test_admin_kubeconfig(kube_cluster: KubeCluster) -> None:
    config = json.loads(kube_cluster.kubeconfig.read_text())
    assert config["current-context"] == "lazyimage-test"
    assert config["clusters"][0]["cluster"]["server"] == kube_cluster.server
    assert "client-key-data" in config["users"][0]["user"]
    whoami = json.loads(kube_cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    user_info = whoami["status"]["userInfo"]
    assert user_info["username"] == "admin"
    assert "system:masters" in user_info["groups"]


def test_configmap_round_trip(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": kube_namespace},
        "data": {"mode": "lazy", "chunk": "4M"},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    read = json.loads(
        kube_cluster.kubectl(
            "get", "configmap", "settings", "--namespace", kube_namespace, "-o", "json"
        ).stdout
    )
    assert read["data"] == {"mode": "lazy", "chunk": "4M"}
    assert read["metadata"]["uid"]


def test_kubectl_failure_carries_stderr(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    with pytest.raises(KubectlError) as caught:
        kube_cluster.kubectl("get", "configmap", "absent", "--namespace", kube_namespace)
    assert caught.value.returncode not in (0, None)
    assert "NotFound" in caught.value.stderr
    assert "get configmap absent" in str(caught.value)


def test_user_without_grants_is_forbidden_until_bound(kube_cluster: KubeCluster) -> None:
    alice = kube_cluster.user("alice")
    denied = kube_cluster.kubectl("get", "namespaces", kubeconfig=alice.kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert 'User "alice"' in denied.stderr

    # Unique names: the cluster lives for the whole session.
    role = f"list-namespaces-{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "clusterrole", role, "--verb=list", "--resource=namespaces")
    try:
        kube_cluster.kubectl(
            "create", "clusterrolebinding", role, f"--clusterrole={role}", "--user=alice"
        )
        listed = _poll_kubectl_ok(kube_cluster, alice, "get", "namespaces", "-o", "name")
        assert "namespace/default" in listed.split()
        # The grant is exactly list: reading one namespace is still denied.
        get_one = kube_cluster.kubectl(
            "get", "namespace", "default", kubeconfig=alice.kubeconfig, check=False
        )
        assert get_one.returncode != 0
        assert "forbidden" in get_one.stderr.lower(), get_one.stderr
    finally:
        kube_cluster.kubectl("delete", "clusterrolebinding", role, "--ignore-not-found")
        kube_cluster.kubectl("delete", "clusterrole", role, "--ignore-not-found")


def test_user_groups_come_from_the_certificate(kube_cluster: KubeCluster) -> None:
    bob = kube_cluster.user("bob", groups=["lazyimage:testers", "system:masters"])
    whoami = json.loads(
        kube_cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=bob.kubeconfig).stdout
    )
    user_info = whoami["status"]["userInfo"]
    assert user_info["username"] == "bob"
    assert {"lazyimage:testers", "system:masters"} <= set(user_info["groups"])
    # system:masters is cluster-admin, so bob may list namespaces at once.
    kube_cluster.kubectl("get", "namespaces", kubeconfig=bob.kubeconfig)


def test_service_account_token_identity(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    kubeconfig = kube_cluster.service_account_kubeconfig(kube_namespace, "sa")
    whoami = json.loads(
        kube_cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    )
    user_info = whoami["status"]["userInfo"]
    assert user_info["username"] == f"system:serviceaccount:{kube_namespace}:sa"
    assert f"system:serviceaccounts:{kube_namespace}" in user_info["groups"]
    # A ServiceAccount has no grants of its own.
    denied = kube_cluster.kubectl("get", "namespaces", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr


def test_service_account_in_a_new_namespace(kube_cluster: KubeCluster) -> None:
    namespace = f"sa-new-{secrets.token_hex(3)}"
    try:
        kubeconfig = kube_cluster.service_account_kubeconfig(namespace, "builder")
        # Asking again reuses the namespace and ServiceAccount.
        again = kube_cluster.service_account_kubeconfig(namespace, "builder")
        assert again.exists()
        kube_cluster.kubectl("get", "serviceaccount", "builder", "--namespace", namespace)
        whoami = json.loads(
            kube_cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
        )
        assert whoami["status"]["userInfo"]["username"] == (
            f"system:serviceaccount:{namespace}:builder"
        )
    finally:
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def second_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path_factory.mktemp("kube-lifecycle"))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_stop_and_restart_keep_data(second_cluster: KubeCluster) -> None:
    cluster = second_cluster.start()
    pids = cluster.pids
    assert len(pids) == 2
    server = cluster.server
    cluster.kubectl("create", "configmap", "survivor", "--from-literal=kept=yes")
    cluster.stop()
    assert not cluster.running
    assert cluster.pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # signal 0 only asks whether the process exists
    cluster.start()
    assert cluster.server == server  # kubeconfigs written before stay valid
    read = json.loads(cluster.kubectl("get", "configmap", "survivor", "-o", "json").stdout)
    assert read["data"] == {"kept": "yes"}
    assert "Serving securely" in cluster.apiserver_log()


def test_start_failure_reports_the_log(second_cluster: KubeCluster) -> None:
    # Hold the apiserver's port: with ports pinned, start() must fail fast, say why from the
    # apiserver's own log, and leave nothing running.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        second_cluster.port = int(held.getsockname()[1])
        second_cluster.etcd_client_port, second_cluster.etcd_peer_port = free_port(), free_port()
        with pytest.raises(KubeStartError) as caught:
            second_cluster.start()
    message = str(caught.value)
    # It failed on the apiserver's exit, not by waiting out its startup timeout.
    assert "kube-apiserver exited" in message and "not ready after" not in message
    assert "address already in use" in message
    assert second_cluster.pids == []
