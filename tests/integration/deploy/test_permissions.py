"""The chart's RBAC and admission policy, installed on a real API server and exercised with the
tokens the components would hold.

The agent's token is bound to a pod on node ``node-a``, as kubelet's projected token is; the
API server then puts the node's name in the token's user info. The agent may write only
``node-a``'s LazyImageNode status; RBAC alone would let it write every node's. The Deployment
and DaemonSet the chart renders are stored too, and stay inert: nothing here runs pods.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from lazyimage.kube import KubeClient, KubeConfig, KubeError, ResourcePath

from tests.fixtures.kube import KubeCluster
from tests.integration.deploy.helm import Helm, Identity, dump, manifests, poll, token_identity

pytestmark = [pytest.mark.integration]

RELEASE = "lazyimage"
AGENT_SA = "lazyimage-agent"
OPERATOR_SA = "lazyimage-operator"
POLICY = "lazyimage-agent-own-node"
NODE_A, NODE_B, NODE_C = "node-a", "node-b", "node-c"
AGENT_POD = "agent-node-a"
PULL_SECRET = "registry-pull"
LAZYIMAGE = "deploy-test-image"
NODES = ResourcePath("lazyimage.io", "v1alpha1", "lazyimagenodes")
LAZYIMAGES = ResourcePath("lazyimage.io", "v1alpha1", "lazyimages")
_REQUEST_TIMEOUT = 20.0
# RBAC and admission policies are read from informer caches: new ones take a moment to apply.
PROPAGATION_TIMEOUT = 30.0
_CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


@dataclass(frozen=True)
class Installed:
    cluster: KubeCluster
    namespace: str
    agent: Identity  # bound to pod agent-node-a, on node-a
    agent_unbound: Identity  # the same ServiceAccount, bound to nothing
    operator: Identity


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def _lazyimage_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImageNode",
        "metadata": {"name": name},
        "spec": {"orders": []},
    }


def _as(who: Identity, call: Callable[[KubeClient], Awaitable[object]]) -> KubeError | None:
    """Run ``call`` with the components' own client (lazyimage.kube, under trio, as the agent
    runs it) authenticated as ``who``; the error it raised, or None. kubectl would not do for
    status writes: its ``patch --subresource=status`` reads the status first, which neither
    component does nor is granted."""

    async def main() -> KubeError | None:
        config = KubeConfig.from_kubeconfig(who.kubeconfig)
        async with KubeClient(config, timeout=_REQUEST_TIMEOUT) as client:
            try:
                await call(client)
            except KubeError as exc:
                return exc
        return None

    return trio.run(main)


def _patch_status(who: Identity, node: str, version: str) -> KubeError | None:
    """The agent's report: a merge patch of the node's LazyImageNode status."""
    patch = {"status": {"orders": 0, "ready": 0, "failed": 0, "agent": {"version": version}}}
    return _as(who, lambda client: client.merge_patch(NODES, node, patch, subresource="status"))


def _agent_version(cluster: KubeCluster, node: str) -> str | None:
    obj = cluster.kubectl_json("get", "lazyimagenode", node)
    version = ((obj.get("status") or {}).get("agent") or {}).get("version")
    return str(version) if version is not None else None


def _can(cluster: KubeCluster, who: Identity, *args: str) -> bool:
    """``kubectl auth can-i ARGS`` as ``who``: the authorizer's answer (RBAC only)."""
    proc = cluster.kubectl("auth", "can-i", *args, kubeconfig=who.kubeconfig, check=False)
    answer = proc.stdout.strip()
    # Only warnings (a cluster-scoped resource "is not namespace scoped") may come with it.
    errors = [line for line in proc.stderr.splitlines() if line and not line.startswith("Warning:")]
    if (proc.returncode, answer) not in ((0, "yes"), (1, "no")) or errors:
        raise AssertionError(f"kubectl auth can-i {' '.join(args)}: {answer} {proc.stderr}")
    return answer == "yes"


def _token(cluster: KubeCluster, namespace: str, sa: str, *bound: str) -> str:
    return cluster.kubectl(
        "create", "token", sa, "--namespace", namespace, "--duration=1h", *bound
    ).stdout.strip()


@pytest.fixture(scope="module")
def installed(
    lazyimage_crds: KubeCluster, helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """The chart (without CRDs: the session's are the same) in a namespace of its own, two
    Nodes with their LazyImageNodes, the agent's pod on node-a, a pull secret, and a token for
    each identity. Everything is removed afterwards."""
    cluster = lazyimage_crds
    namespace = f"lazyimage-deploy-{secrets.token_hex(3)}"
    objects = manifests(helm.template(namespace, release=RELEASE))
    work = tmp_path_factory.mktemp("deploy-identities")
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl("apply", "-f", "-", input=dump(objects))
        fixtures: list[dict[str, Any]] = [
            _node(NODE_A),
            _node(NODE_B),
            _lazyimage_node(NODE_A),
            _lazyimage_node(NODE_B),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": AGENT_POD, "namespace": namespace},
                "spec": {
                    "serviceAccountName": AGENT_SA,
                    "nodeName": NODE_A,
                    "containers": [{"name": "agent", "image": "lazyimage:0.1.0"}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": PULL_SECRET, "namespace": namespace},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": '{"auths": {}}'},
            },
        ]
        cluster.kubectl("apply", "-f", "-", input=dump(fixtures))
        bound = ("--bound-object-kind=Pod", f"--bound-object-name={AGENT_POD}")
        installed = Installed(
            cluster=cluster,
            namespace=namespace,
            agent=token_identity(
                cluster,
                work / "agent.kubeconfig",
                "agent",
                _token(cluster, namespace, AGENT_SA, *bound),
            ),
            agent_unbound=token_identity(
                cluster,
                work / "agent-unbound.kubeconfig",
                "agent-unbound",
                _token(cluster, namespace, AGENT_SA),
            ),
            operator=token_identity(
                cluster,
                work / "operator.kubeconfig",
                "operator",
                _token(cluster, namespace, OPERATOR_SA),
            ),
        )

        def rbac_ready() -> str | None:
            proc = cluster.kubectl(
                "get", "lazyimagenode", NODE_A, kubeconfig=installed.agent.kubeconfig, check=False
            )
            return None if proc.returncode == 0 else proc.stderr

        def policy_ready() -> str | None:
            error = _patch_status(installed.agent_unbound, NODE_A, "policy-probe")
            return None if error is not None and POLICY in str(error) else f"answered {error}"

        poll("the agent's RBAC applies", rbac_ready, PROPAGATION_TIMEOUT)
        poll("the admission policy applies", policy_ready, PROPAGATION_TIMEOUT)
        yield installed
    finally:
        cluster_scoped = [obj for obj in objects if obj["kind"] in _CLUSTER_SCOPED]
        cluster.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            input=dump(cluster_scoped), check=False,
        )  # fmt: skip
        cluster.kubectl(
            "delete", "lazyimagenode", NODE_A, NODE_B, NODE_C,
            "--ignore-not-found", "--wait=false", check=False,
        )  # fmt: skip
        cluster.kubectl(
            "delete", "lazyimage", LAZYIMAGE, "--ignore-not-found", "--wait=false", check=False
        )
        # Bound to a node, a pod waits for its kubelet to confirm a graceful delete.
        cluster.kubectl(
            "delete", "pod", AGENT_POD, "--namespace", namespace,
            "--grace-period=0", "--force", "--ignore-not-found", check=False,
        )  # fmt: skip
        cluster.kubectl(
            "delete", "node", NODE_A, NODE_B, "--ignore-not-found", "--wait=false", check=False
        )
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _whoami(cluster: KubeCluster, who: Identity) -> dict[str, Any]:
    info: dict[str, Any] = cluster.kubectl_json("auth", "whoami", kubeconfig=who.kubeconfig)[
        "status"
    ]["userInfo"]
    return info


def test_bound_agent_token_carries_its_node(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.namespace
    bound = _whoami(cluster, installed.agent)
    assert bound["username"] == f"system:serviceaccount:{ns}:{AGENT_SA}"
    assert bound["extra"]["authentication.kubernetes.io/node-name"] == [NODE_A]
    assert bound["extra"]["authentication.kubernetes.io/pod-name"] == [AGENT_POD]
    unbound = _whoami(cluster, installed.agent_unbound)
    assert unbound["username"] == bound["username"]
    assert "authentication.kubernetes.io/node-name" not in unbound.get("extra", {})


def test_agent_follows_its_node(installed: Installed) -> None:
    cluster, agent = installed.cluster, installed.agent
    got = cluster.kubectl_json("get", "lazyimagenode", NODE_A, kubeconfig=agent.kubeconfig)
    assert got["metadata"]["name"] == NODE_A
    # What the agent's client does: a list, then a watch, both narrowed to its node's name.
    base = f"/apis/lazyimage.io/v1alpha1/lazyimagenodes?fieldSelector=metadata.name%3D{NODE_A}"
    listed = json.loads(cluster.kubectl("get", "--raw", base, kubeconfig=agent.kubeconfig).stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == [NODE_A]
    # A watch from resourceVersion 0 starts with the object as it is: ADDED.
    watched = cluster.kubectl(
        "get", "--raw", f"{base}&watch=true&timeoutSeconds=1&resourceVersion=0",
        kubeconfig=agent.kubeconfig,
    ).stdout  # fmt: skip
    events = [json.loads(line) for line in watched.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", NODE_A)]


def test_agent_reports_its_own_node(installed: Installed) -> None:
    cluster = installed.cluster
    version = f"report-{secrets.token_hex(3)}"
    assert _patch_status(installed.agent, NODE_A, version) is None
    assert _agent_version(cluster, NODE_A) == version


def test_agent_cannot_report_for_another_node(installed: Installed) -> None:
    cluster = installed.cluster
    before = _agent_version(cluster, NODE_B)
    error = _patch_status(installed.agent, NODE_B, "intruder")
    # Refused by the policy, where RBAC alone allows it, with the policy's message.
    assert _can(
        cluster, installed.agent, "patch", f"lazyimagenodes/{NODE_B}", "--subresource=status"
    )
    assert error is not None and error.status == 403, error
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in str(error), error
    assert "lazyimage agent of node node-a may write only LazyImageNode node-a, not node-b" in (
        str(error)
    )
    assert _agent_version(cluster, NODE_B) == before
    # A full update (PUT) of the status is refused the same way.
    current = cluster.kubectl_json("get", "lazyimagenode", NODE_B)
    current["status"] = {"orders": 1}
    error = _as(installed.agent, lambda client: client.replace_status(NODES, NODE_B, current))
    assert error is not None and POLICY in str(error), error
    assert _agent_version(cluster, NODE_B) == before


def test_unbound_agent_token_reports_nowhere(installed: Installed) -> None:
    cluster = installed.cluster
    before = _agent_version(cluster, NODE_A)
    error = _patch_status(installed.agent_unbound, NODE_A, "unbound")
    assert error is not None and error.status == 403, error
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in str(error), error
    assert "not bound to a pod on a node" in str(error), error
    assert _agent_version(cluster, NODE_A) == before


def test_agent_cannot_write_orders(installed: Installed) -> None:
    cluster, agent = installed.cluster, installed.agent
    proc = cluster.kubectl(
        "patch", "lazyimagenode", NODE_A, "--type=merge",
        "-p", json.dumps({"spec": {"orders": [{"image": "x:1", "issuedAt": _now()}]}}),
        kubeconfig=agent.kubeconfig, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    # RBAC's refusal, before admission: the spec is the operator's.
    assert 'cannot patch resource "lazyimagenodes"' in proc.stderr, proc.stderr
    assert cluster.kubectl_json("get", "lazyimagenode", NODE_A)["spec"]["orders"] == []
    for verb in ("create", "update", "delete"):
        assert not _can(cluster, agent, verb, "lazyimagenodes")


def test_agent_reads_named_secrets_only(installed: Installed) -> None:
    cluster, agent, ns = installed.cluster, installed.agent, installed.namespace
    secret = cluster.kubectl_json(
        "get", "secret", PULL_SECRET, "--namespace", ns, kubeconfig=agent.kubeconfig
    )
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    listing = cluster.kubectl(
        "get", "secrets", "--namespace", ns, kubeconfig=agent.kubeconfig, check=False
    )
    assert listing.returncode != 0
    assert 'cannot list resource "secrets"' in listing.stderr, listing.stderr
    assert not _can(cluster, agent, "watch", "secrets", "--namespace", ns)
    assert not _can(cluster, agent, "list", "secrets", "--all-namespaces")


def test_agent_has_nothing_else(installed: Installed) -> None:
    cluster, agent = installed.cluster, installed.agent
    assert _can(cluster, agent, "get", "lazyimages")
    for args in (
        ("list", "lazyimages"),
        ("patch", "lazyimages", "--subresource=status"),
        ("list", "pods", "--all-namespaces"),
        ("get", "nodes"),
        ("create", "events"),
        ("create", "secrets", "--namespace", installed.namespace),
    ):
        assert not _can(cluster, agent, *args), args


def test_operator_permissions(installed: Installed) -> None:
    cluster, operator, ns = installed.cluster, installed.operator, installed.namespace
    pods = cluster.kubectl_json("get", "pods", "--all-namespaces", kubeconfig=operator.kubeconfig)
    assert AGENT_POD in {pod["metadata"]["name"] for pod in pods["items"]}
    nodes = cluster.kubectl_json("get", "nodes", kubeconfig=operator.kubeconfig)
    assert {NODE_A, NODE_B} <= {node["metadata"]["name"] for node in nodes["items"]}

    # Orders: a new node's LazyImageNode, then a merge into it.
    cluster.kubectl(
        "create", "-f", "-", input=json.dumps(_lazyimage_node(NODE_C)),
        kubeconfig=operator.kubeconfig,
    )  # fmt: skip
    order = {"image": "reg.local:5000/app:1", "issuedAt": _now()}
    cluster.kubectl(
        "patch", "lazyimagenode", NODE_C, "--type=merge",
        "-p", json.dumps({"spec": {"orders": [order]}}),
        kubeconfig=operator.kubeconfig,
    )  # fmt: skip
    stored = cluster.kubectl_json("get", "lazyimagenode", NODE_C)["spec"]["orders"]
    assert [o["image"] for o in stored] == [order["image"]]
    # The agents' policy does not concern the operator, whatever the node.
    cluster.kubectl(
        "label", "lazyimagenode", NODE_B, "lazyimage.io/checked=yes",
        kubeconfig=operator.kubeconfig,
    )  # fmt: skip

    # A LazyImage and its status.
    cluster.kubectl(
        "create", "-f", "-",
        input=json.dumps({
            "apiVersion": "lazyimage.io/v1alpha1",
            "kind": "LazyImage",
            "metadata": {"name": LAZYIMAGE},
            "spec": {"image": "reg.local:5000/app:1"},
        }),
        kubeconfig=operator.kubeconfig,
    )  # fmt: skip
    status = {"status": {"nodes": 2, "summary": "0/2"}}
    patched = _as(
        operator,
        lambda client: client.merge_patch(LAZYIMAGES, LAZYIMAGE, status, subresource="status"),
    )
    assert patched is None, patched
    assert cluster.kubectl_json("get", "lazyimage", LAZYIMAGE)["status"]["summary"] == "0/2"

    # No secrets, and pods are only read.
    secret = cluster.kubectl(
        "get", "secret", PULL_SECRET, "--namespace", ns,
        kubeconfig=operator.kubeconfig, check=False,
    )  # fmt: skip
    assert secret.returncode != 0
    assert 'cannot get resource "secrets"' in secret.stderr, secret.stderr
    annotate = cluster.kubectl(
        "annotate", "pod", AGENT_POD, "--namespace", ns, "touched=yes",
        kubeconfig=operator.kubeconfig, check=False,
    )  # fmt: skip
    assert annotate.returncode != 0 and 'cannot patch resource "pods"' in annotate.stderr
    for args in (
        ("delete", "lazyimagenodes"),
        ("delete", "lazyimages"),
        ("list", "secrets", "--all-namespaces"),
        ("patch", "lazyimagenodes", "--subresource=status"),
        ("patch", "nodes"),
    ):
        assert not _can(cluster, operator, *args), args
