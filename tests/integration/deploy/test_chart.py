"""The Helm chart as helm and the API server see it: it lints, renders what each component
needs, carries the repository's CRDs unchanged, refuses bad values, and every object it renders
passes the API server's own validation (a server-side dry run)."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube import KubeCluster
from tests.integration.deploy.helm import (
    CHART,
    CRDS,
    Helm,
    by_kind,
    dump,
    manifests,
    repository_crds,
)

pytestmark = [pytest.mark.integration]

NAMESPACE = "lazyimage-system"


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects rendered"
    return found[0]


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, from a Role or ClusterRole."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_lint(helm: Helm) -> None:
    proc = helm.run("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def test_renders_both_components(helm: Helm) -> None:
    objects = manifests(helm.template(NAMESPACE))
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        ["ServiceAccount"] * 2
        + ["ClusterRole"] * 2
        + ["ClusterRoleBinding"] * 2
        + ["DaemonSet", "Deployment"]
        + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
        + ["RuntimeClass"]
    )
    assert not by_kind(objects, "CustomResourceDefinition")  # only with --include-crds

    daemonset = _one(objects, "DaemonSet")
    assert daemonset["metadata"]["namespace"] == NAMESPACE
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "lazyimage-agent"
    assert pod["hostNetwork"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (agent,) = pod["containers"]
    assert agent["image"] == "lazyimage:0.1.0"
    assert agent["command"] == ["lazyimage-agent"]
    assert agent["securityContext"]["privileged"] is True
    # The image runs as nobody; only the agent is set back to root.
    assert agent["securityContext"]["runAsUser"] == 0
    env = {item["name"]: item for item in agent["env"]}
    assert env["LAZYIMAGE_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["LAZYIMAGE_LISTEN"]["value"] == "0.0.0.0:9090"
    assert env["LAZYIMAGE_STATE_DIR"]["value"] == "/var/lib/lazyimage"
    assert env["LAZYIMAGE_SOCKET"]["value"] == "/run/lazyimage/snapshotter.sock"
    assert env["LAZYIMAGE_CACHE_SIZE"]["value"] == str(10 << 30)
    # No control API: the agent serves none unless given a socket, and the chart gives none.
    assert not [name for name in env if "CONTROL" in name]
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    mounts = {mount["name"]: mount for mount in agent["volumeMounts"]}
    volumes = {volume["name"]: volume["hostPath"] for volume in pod["volumes"]}
    assert mounts["state"]["mountPropagation"] == "Bidirectional"
    # containerd mounts what the agent hands it by host path: the paths must be the same.
    for name, path in (
        ("state", "/var/lib/lazyimage"),
        ("run", "/run/lazyimage"),
        ("dev-fuse", "/dev/fuse"),
    ):
        assert mounts[name]["mountPath"] == volumes[name]["path"] == path
    assert volumes["dev-fuse"]["type"] == "CharDevice"

    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "lazyimage-operator"
    (operator,) = pod["containers"]
    assert operator["command"] == ["lazyimage-operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in operator["args"]
    assert "--lazy-runtime-class=lazyimage" in operator["args"]  # only pods of the class
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["ports"][0]["containerPort"] == 8080


def test_runtime_class_opts_pods_in(helm: Helm) -> None:
    runtime_class = _one(manifests(helm.template(NAMESPACE)), "RuntimeClass")
    assert runtime_class["metadata"]["name"] == "lazyimage"
    # The containerd runtime that files/containerd-dropin.toml defines.
    assert runtime_class["handler"] == "lazyimage"
    dropin = (CHART / "files" / "containerd-dropin.toml").read_text()
    assert "containerd.runtimes.lazyimage]" in dropin
    # The README shows the file users install, as it is.
    assert f"```toml\n{dropin}```" in (CHART.parents[1] / "README.md").read_text()
    renamed = manifests(
        helm.template(
            NAMESPACE, "--set", "runtimeClass.name=lazy", "--set", "runtimeClass.handler=lz"
        )
    )
    assert (
        _one(renamed, "RuntimeClass")["metadata"]["name"],
        _one(renamed, "RuntimeClass")["handler"],
    ) == ("lazy", "lz")
    for off in ("runtimeClass.enabled=false", "agent.enabled=false"):
        assert not by_kind(manifests(helm.template(NAMESPACE, "--set", off)), "RuntimeClass"), off


def test_rbac_rules(helm: Helm) -> None:
    roles = {
        role["metadata"]["name"]: _rules(role)
        for role in by_kind(manifests(helm.template(NAMESPACE)), "ClusterRole")
    }
    assert roles["lazyimage-agent"] == {
        ("lazyimage.io", "lazyimagenodes"): {"get", "list", "watch"},
        ("lazyimage.io", "lazyimagenodes/status"): {"patch", "update"},
        ("lazyimage.io", "lazyimages"): {"get"},
        ("", "secrets"): {"get"},
    }
    operator = roles["lazyimage-operator"]
    assert not any(resource == "secrets" for _, resource in operator)
    assert operator[("", "pods")] == operator[("", "nodes")] == {"get", "list", "watch"}
    assert operator[("lazyimage.io", "lazyimagenodes")] == {
        "get",
        "list",
        "watch",
        "create",
        "patch",
        "update",
    }
    assert operator[("lazyimage.io", "lazyimages/status")] == {"patch", "update"}


def test_pull_secret_namespaces_replace_the_cluster_wide_read(helm: Helm) -> None:
    objects = manifests(
        helm.template(NAMESPACE, "--set", "agent.pullSecretNamespaces={team-a,team-b}")
    )
    (agent_role,) = [
        role
        for role in by_kind(objects, "ClusterRole")
        if role["metadata"]["name"].endswith("agent")
    ]
    assert ("", "secrets") not in _rules(agent_role)
    roles = by_kind(objects, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert all(_rules(role) == {("", "secrets"): {"get"}} for role in roles)
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "lazyimage-agent", "namespace": NAMESPACE}
        ]


def test_admission_policy_names_the_agent(helm: Helm) -> None:
    objects = manifests(helm.template(NAMESPACE, release="edge"))
    policy = _one(objects, "ValidatingAdmissionPolicy")
    binding = _one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (condition,) = policy["spec"]["matchConditions"]
    # The release's own agent ServiceAccount, in the release namespace.
    assert condition["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:lazyimage-system:edge-lazyimage-agent'"
    )
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"lazyimagenodes", "lazyimagenodes/status"}
    assert "UPDATE" in rule["operations"]


def test_components_can_be_turned_off(helm: Helm) -> None:
    without_agent = manifests(helm.template(NAMESPACE, "--set", "agent.enabled=false"))
    assert {obj["kind"] for obj in without_agent} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }
    assert all(obj["metadata"]["name"] == "lazyimage-operator" for obj in without_agent)
    no_class = manifests(helm.template(NAMESPACE, "--set", "runtimeClass.enabled=false"))
    (operator,) = _one(no_class, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [arg for arg in operator["args"] if arg.startswith("--lazy-runtime-class")]
    without_operator = manifests(helm.template(NAMESPACE, "--set", "operator.enabled=false"))
    assert not by_kind(without_operator, "Deployment")
    assert all("operator" not in obj["metadata"]["name"] for obj in without_operator)


def test_agent_options(helm: Helm) -> None:
    objects = manifests(
        helm.template(
            NAMESPACE,
            "--set",
            "agent.hostNetwork=true",
            "--set",
            "agent.insecureRegistries={127.0.0.1:5000,mirror.local:5000}",
            "--set",
            "agent.registryCredentialsSecret=registry-login",
            "--set",
            "agent.cacheSize=1073741824",
            "--set",
            "agent.backgroundFill=false",
            "--set",
            "imagePullSecrets={pull-me}",
            "--set",
            "image.tag=dev",
            "--set",
            "agent.controlApi=true",
        )
    )
    pod = _one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["imagePullSecrets"] == [{"name": "pull-me"}]
    (agent,) = pod["containers"]
    assert agent["image"] == "lazyimage:dev"
    env = {item["name"]: item.get("value") for item in agent["env"]}
    assert env["LAZYIMAGE_INSECURE_REGISTRY"] == "127.0.0.1:5000,mirror.local:5000"
    assert env["LAZYIMAGE_CACHE_SIZE"] == "1073741824"
    assert env["LAZYIMAGE_BACKGROUND_FILL"] == "false"
    assert env["LAZYIMAGE_DOCKER_CONFIG"] == "/etc/lazyimage/registry/config.json"
    # On the node, in the run directory shared with it; never on the port.
    assert env["LAZYIMAGE_CONTROL_SOCKET"] == "/run/lazyimage/control.sock"
    assert env["LAZYIMAGE_LISTEN"] == "0.0.0.0:9090"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry-credentials"]
    assert volume["secret"]["secretName"] == "registry-login"


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {item["name"]: item.get("value") for item in container.get("env") or []}


def test_api_server_address_reaches_both_pods(helm: Helm) -> None:
    """Without kube-proxy the ``kubernetes`` Service does not answer: ``apiServer`` gives both
    pods the address, and the operator can share the node's network on ports of its own."""
    default = manifests(helm.template(NAMESPACE))
    for obj in by_kind(default, "DaemonSet") + by_kind(default, "Deployment"):
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        assert not {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} & set(_env(container))
    operator_pod = _one(default, "Deployment")["spec"]["template"]["spec"]
    assert operator_pod["hostNetwork"] is False
    objects = manifests(
        helm.template(
            NAMESPACE,
            "--set", "apiServer.host=127.0.0.1",
            "--set", "apiServer.port=6443",
            "--set", "operator.hostNetwork=true",
            "--set", "operator.healthPort=18080",
            "--set", "operator.metricsPort=18081",
        )
    )  # fmt: skip
    agent_pod = _one(objects, "DaemonSet")["spec"]["template"]["spec"]
    operator_pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    for pod in (agent_pod, operator_pod):
        (container,) = pod["containers"]
        env = _env(container)
        assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
        assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert operator_pod["hostNetwork"] is True
    assert operator_pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (operator,) = operator_pod["containers"]
    assert "--liveness=http://0.0.0.0:18080/healthz" in operator["args"]
    assert "--metrics=0.0.0.0:18081" in operator["args"]
    assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {
        "health": 18080,
        "metrics": 18081,
    }


def test_the_nodes_registry_configuration_reaches_the_agent(helm: Helm) -> None:
    """containerd's certs.d, read-only at the node's own path; another path, or none."""
    pod = _one(manifests(helm.template(NAMESPACE)), "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert _env(agent)["LAZYIMAGE_REGISTRY_CONFIG"] == "/etc/containerd/certs.d"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["registry-config"] == {
        "name": "registry-config",
        "mountPath": "/etc/containerd/certs.d",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registry-config"]["hostPath"] == {
        "path": "/etc/containerd/certs.d",
        "type": "DirectoryOrCreate",
    }

    moved = helm.template(NAMESPACE, "--set", "agent.registryConfig=/etc/k3s/certs.d")
    pod = _one(manifests(moved), "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert _env(agent)["LAZYIMAGE_REGISTRY_CONFIG"] == "/etc/k3s/certs.d"
    assert {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}["registry-config"] == (
        "/etc/k3s/certs.d"
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registry-config"]["hostPath"]["path"] == "/etc/k3s/certs.d"

    off = helm.template(NAMESPACE, "--set", "agent.registryConfig=")
    pod = _one(manifests(off), "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert "LAZYIMAGE_REGISTRY_CONFIG" not in _env(agent)
    assert "registry-config" not in {m["name"] for m in agent["volumeMounts"]}
    assert "registry-config" not in {v["name"] for v in pod["volumes"]}


def test_the_fuse_holder_outlives_the_agents_pod(helm: Helm) -> None:
    """By default the holder leaves the pod's cgroups (hostPID, the host's cgroup tree), so
    agents are upgraded in place; without it, none of that."""
    objects = manifests(helm.template(NAMESPACE))
    daemonset = _one(objects, "DaemonSet")
    assert daemonset["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (agent,) = pod["containers"]
    assert _env(agent)["LAZYIMAGE_FUSE_HOLDER_CGROUP"] == "/lazyimage-fuse-holder"
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts["host-cgroup"] == "/host/sys/fs/cgroup"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["host-cgroup"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}

    without = helm.template(NAMESPACE, "--set", "agent.holderCgroup=")
    pod = _one(manifests(without), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is False
    (agent,) = pod["containers"]
    assert "LAZYIMAGE_FUSE_HOLDER_CGROUP" not in _env(agent)
    assert "host-cgroup" not in {v["name"] for v in pod["volumes"]}
    refused = helm.run(
        "template", "x", str(CHART), "--set", "agent.holderCgroup=../up", check=False
    )
    assert refused.returncode != 0 and "holderCgroup" in refused.stderr, refused.stderr


def test_prewarm_pulls_through_the_nodes_containerd(helm: Helm) -> None:
    """By default the agent gets containerd's socket directory (not the socket, which a
    restarted containerd makes anew) and the RuntimeClass's handler; empty, neither."""
    objects = manifests(helm.template(NAMESPACE, "--set", "runtimeClass.handler=lazy2"))
    pod = _one(objects, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    env = _env(agent)
    assert env["LAZYIMAGE_CRI_SOCKET"] == "/host/run/containerd/containerd.sock"
    assert env["LAZYIMAGE_CRI_RUNTIME_HANDLER"] == "lazy2"
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "cri-socket"]
    assert mount == {"name": "cri-socket", "mountPath": "/host/run/containerd", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cri-socket"]["hostPath"] == {"path": "/run/containerd", "type": "Directory"}

    without = helm.template(NAMESPACE, "--set", "agent.criSocket=")
    pod = _one(manifests(without), "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert "LAZYIMAGE_CRI_SOCKET" not in _env(agent)
    assert "LAZYIMAGE_CRI_RUNTIME_HANDLER" not in _env(agent)
    assert "cri-socket" not in {v["name"] for v in pod["volumes"]}


def test_crds_are_the_repository_crds(helm: Helm) -> None:
    # One source of truth: the chart's crds/ is a link to the repository's crds/.
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == CRDS.resolve()
    rendered = by_kind(
        manifests(helm.template(NAMESPACE, "--include-crds")), "CustomResourceDefinition"
    )
    assert {crd["metadata"]["name"]: crd for crd in rendered} == repository_crds()


def test_package_holds_the_crds(helm: Helm, tmp_path: Path) -> None:
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    archive = tmp_path / "lazyimage-0.1.0.tgz"
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        crds = sorted(name for name in members if name.startswith("lazyimage/crds/"))
        assert crds == [f"lazyimage/crds/{path.name}" for path in sorted(CRDS.glob("*.yaml"))]
        for name in crds:
            assert members[name].isfile()  # the link's target, not a link
            data = tar.extractfile(members[name])
            assert data is not None
            assert data.read() == (CRDS / Path(name).name).read_bytes()
    # The packaged chart installs them too.
    rendered = by_kind(
        manifests(helm.template(NAMESPACE, "--include-crds", chart=archive)),
        "CustomResourceDefinition",
    )
    assert {crd["metadata"]["name"]: crd for crd in rendered} == repository_crds()


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("agent.cachesize=1", "cachesize"),  # a mistyped key
        ("operator.ordersPerNode=0", "ordersPerNode"),
        ("agent.updateStrategy.type=Sometimes", "updateStrategy"),
        ("agent.logLevel=loud", "logLevel"),
        ("runtimeClass.name=Not_A_Name", "runtimeClass"),
        ("apiServer.port=70000", "port"),
        ("apiServer.address=10.0.0.1", "address"),
        ("agent.registryConfig=etc/certs.d", "registryConfig"),  # not an absolute path
    ],
)
def test_values_schema_refuses(helm: Helm, setting: str, complaint: str) -> None:
    proc = helm.run("template", "lazyimage", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    assert "schema" in proc.stderr and complaint in proc.stderr, proc.stderr


def test_kube_version_constraint(helm: Helm) -> None:
    old = helm.run("template", "lazyimage", str(CHART), "--kube-version", "1.29.9", check=False)
    assert old.returncode != 0
    assert "kubeVersion" in old.stderr and ">=1.30.0-0" in old.stderr, old.stderr
    helm.run("template", "lazyimage", str(CHART), "--kube-version", "1.30.0")


# -- against the API server --------------------------------------------------------------------


def _dry_run(cluster: KubeCluster, objects: list[dict[str, Any]]) -> tuple[int, str]:
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=dump(objects), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_server_side_dry_run(helm: Helm, kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    defaults = manifests(helm.template(ns, "--include-crds"))
    code, output = _dry_run(kube_cluster, defaults)
    assert code == 0, output
    # kubectl names each object it sent, "(server dry run)".
    assert output.count("(server dry run)") == len(defaults), output
    assert "validatingadmissionpolicy.admissionregistration.k8s.io/lazyimage-agent-own-node" in (
        output
    )

    # Every optional branch of the templates, too.
    options = manifests(
        helm.template(
            ns,
            "--set",
            "agent.hostNetwork=true",
            "--set",
            "agent.insecureRegistries={127.0.0.1:5000}",
            "--set",
            "agent.registryCredentialsSecret=registry-login",
            "--set",
            f"agent.pullSecretNamespaces={{{ns}}}",
            "--set",
            "agent.updateStrategy.type=OnDelete",
            "--set",
            "imagePullSecrets={pull-me}",
        )
    )
    assert by_kind(options, "Role")
    code, output = _dry_run(kube_cluster, options)
    assert code == 0, output

    # The dry run does validate: the same DaemonSet with a bad propagation mode is refused.
    broken = copy.deepcopy(defaults)
    mounts = _one(broken, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    mounts[0]["mountPropagation"] = "Sideways"
    code, output = _dry_run(kube_cluster, broken)
    assert code != 0
    assert "mountPropagation" in output, output


def test_helm_install_and_uninstall(
    helm: Helm, lazyimage_crds: KubeCluster, kube_namespace: str
) -> None:
    """The way an operator of a cluster deploys it: helm install, checked against the server's
    version, then helm uninstall, which takes the cluster-scoped objects with it."""
    cluster, ns, release = lazyimage_crds, kube_namespace, "helm-e2e"
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    installed = helm.run("install", release, str(CHART), "--namespace", ns, kubeconfig)
    assert "STATUS: deployed" in installed.stdout, installed.stdout
    assert f"kubectl -n {ns} rollout status daemonset/{release}-lazyimage-agent" in (
        installed.stdout
    )
    notes = installed.stdout.split("NOTES:", 1)[1]
    assert 'lazyimage.io/prewarm: "true"' in notes
    assert "the next agent takes it over" in notes  # the holder outlives the agent's pod
    # The containerd 2.x drop-in, exactly as shipped, and what a lazy pod must set.
    dropin = (CHART / "files" / "containerd-dropin.toml").read_text().strip()
    assert "\n".join("    " + line for line in dropin.splitlines()) in notes, notes
    assert "runtimeClassName: lazyimage" in notes
    assert "io.containerd.cri.runtime-handler: lazyimage" in notes
    # Never the containerd 1.x global snapshotter, which makes the agent's own pod need it.
    assert "io.containerd.grpc.v1.cri" not in notes
    assert "kubectl delete crd lazyimages.lazyimage.io lazyimagenodes.lazyimage.io" in notes
    # The drop-in follows the agent's paths and the RuntimeClass's handler.
    moved = helm.run(
        "install",
        "helm-notes",
        str(CHART),
        "--namespace",
        ns,
        kubeconfig,
        "--dry-run=server",
        "--set",
        "agent.runDir=/run/li",
        "--set",
        "agent.stateDir=/data/li",
        "--set",
        "runtimeClass.name=lazy",
        "--set",
        "runtimeClass.handler=lz",
    ).stdout.split("NOTES:", 1)[1]
    assert 'address = "/run/li/snapshotter.sock"' in moved, moved
    assert 'root = "/data/li/snapshotter"' in moved
    assert '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.lz]' in moved
    assert "/lazyimage/" not in moved and "runtimes.lazyimage" not in moved, moved
    assert "runtimeClassName: lazy\n" in moved
    assert "io.containerd.cri.runtime-handler: lz\n" in moved
    for kind, name in (
        ("daemonset", f"{release}-lazyimage-agent"),
        ("deployment", f"{release}-lazyimage-operator"),
        ("serviceaccount", f"{release}-lazyimage-agent"),
    ):
        cluster.kubectl("get", kind, name, "--namespace", ns)
    policy = f"{release}-lazyimage-agent-own-node"
    cluster.kubectl("get", "validatingadmissionpolicy", policy)
    cluster.kubectl("get", "clusterrole", f"{release}-lazyimage-operator")

    helm.run("uninstall", release, "--namespace", ns, kubeconfig)
    gone = cluster.kubectl("get", "validatingadmissionpolicy", policy, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr
    gone = cluster.kubectl("get", "clusterrole", f"{release}-lazyimage-operator", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr
    # The CRDs stay (helm never deletes what it installed from crds/).
    cluster.kubectl("get", "crd", "lazyimagenodes.lazyimage.io")
