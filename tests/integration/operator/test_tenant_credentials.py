"""Tenants' credentials stay apart, through the real order path: pods with pull secrets in
their namespaces, the operator, the API server, the agent, and a real registry with htpasswd
logins or a real token server whose users may each read only their own repositories.

What each request authenticated as is read at the registry (its own log) and at the token
server (every token request, with its account and scopes), never from the agent's word.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from lazyimage.oci import Descriptor, Manifest
from lazyimage.registry import Credentials, Keychain, Reference, RegistryClient

from tests.fixtures.images import TestImage
from tests.fixtures.kube import KubeCluster
from tests.fixtures.registry import Authorization, RegistryServer
from tests.fixtures.tokenserver import TokenServer
from tests.integration.convert.cli import lazyimage
from tests.integration.operator.helpers import (
    create,
    node_agent,
    node_image,
    prewarm_pod,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ADMIN = ("admin", "adm1n-Pa55")


@dataclass(frozen=True)
class PrivateImage:
    ref: str
    layers: list[Descriptor]

    @property
    def repository(self) -> str:
        return Reference.parse(self.ref).repository


def _docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory / "config.json"


def push_private(
    image: TestImage,
    registry: RegistryServer,
    repository: str,
    login: tuple[str, str],
    config_dir: Path,
    *convert_args: str,
) -> PrivateImage:
    """Copy and convert ``image`` to ``HOST/repository:esgz`` as ``login``."""
    config = _docker_config(config_dir, registry.host, *login)
    env = {**os.environ, "DOCKER_CONFIG": str(config.parent)}
    source, target = (f"{registry.host}/{repository}:{tag}" for tag in ("gzip", "esgz"))
    for args in (("copy", image.ref, source), ("convert", source, target, *convert_args)):
        done = lazyimage(*args, "--insecure-registry", registry.host, env=env)
        assert done.code == 0, done.err

    async def layers() -> list[Descriptor]:
        keychain = Keychain({registry.host: Credentials(*login)})
        async with RegistryClient(keychain=keychain, insecure_registries=(registry.host,)) as c:
            fetched = await c.get_manifest(Reference.parse(target))
            return Manifest.parse(fetched.data, fetched.media_type).layers

    return PrivateImage(target, anyio.run(layers))


def pull_secret(namespace: str, name: str, host: str, user: str, password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def wait_ready(cluster: KubeCluster, node: str, image: str, agent: Any, operator: Any) -> None:
    report = wait_for(
        f"the report of {image}",
        lambda: (r := node_image(cluster, node, image)) and r["state"] in ("Ready", "Failed") and r,
        60,
        lambda: agent.log() + operator.log(),
    )
    assert report["state"] == "Ready", report


def mount_layers(agent: Any, image: PrivateImage) -> list[Path]:
    """Mount the image's layers through the agent's layer manager (the path containerd's
    Prepare takes), reading nothing yet."""
    toc = "containerd.io/snapshot/stargz/toc.digest"
    return [
        Path(agent.mount(image.ref, layer.digest, layer.annotations[toc])["path"])
        for layer in image.layers
    ]


def read_all(paths: list[Path]) -> int:
    """Read every regular file under the mounted layers; returns the bytes read."""
    total = 0
    for top in paths:
        for root, _, files in os.walk(top):
            for name in files:
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                total += len(path.read_bytes())
    return total


@pytest.fixture
def second_namespace(kube_namespace: str, lazyimage_crds: KubeCluster) -> Iterator[str]:
    name = f"{kube_namespace[:56]}-b"
    lazyimage_crds.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        lazyimage_crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


# Tokens live this long (the client drops them a quarter earlier): short, so that the lazy
# reads after a prewarm need new ones, as a container's reads do hours after its start.
TOKEN_LIFETIME = 2


@pytest.fixture
def tenant_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A token-auth registry where ``alice`` may read only ``team-a/...`` and ``bob`` only
    ``team-b/...``; ``admin`` may do anything."""
    users = {ADMIN[0]: ADMIN[1], "alice": "al1ce-Pa55", "bob": "b0b-Pa55"}
    prefixes = {"alice": ["team-a/"], "bob": ["team-b/"]}
    with (
        TokenServer(users=users, user_prefixes=prefixes, expires_in=TOKEN_LIFETIME) as tokens,
        RegistryServer(tmp_path / "tenant-registry", token_server=tokens) as server,
    ):
        yield server


def test_each_namespaces_secret_serves_only_its_own_repository(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    second_namespace: str,
    tenant_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    """Two namespaces, two secrets for one registry, two repositories: each image prewarms
    and its lazy mount reads with its own namespace's credentials only. (With one keychain
    shared by all, the newest secret would be tried for both once the prewarm's tokens
    expired, and the token server would grant it nothing on the other repository.)"""
    cluster, node, registry = lazyimage_crds, "tenants-node", tenant_registry
    tokens = registry.token_server
    assert tokens is not None
    image_a = push_private(busybox_image, registry, "team-a/busybox", ADMIN, tmp_path / "dc")
    # Another compression level, so that the two images share no layer (a layer is mounted
    # once per node whoever asks, as containerd's content store shares it).
    image_b = push_private(
        busybox_image, registry, "team-b/busybox", ADMIN, tmp_path / "dc", "--level", "1"
    )
    assert not {d.digest for d in image_a.layers} & {d.digest for d in image_b.layers}
    tenants = {
        kube_namespace: ("alice", tokens.users["alice"], image_a),
        second_namespace: ("bob", tokens.users["bob"], image_b),
    }
    for namespace, (user, password, _) in tenants.items():
        create(cluster, pull_secret(namespace, "pull", registry.host, user, password))
    agent = node_agent(agent_factory, registry, cluster, node)
    operator = operator_factory(cluster.kubeconfig)
    admin_requests, admin_reads = len(tokens.requests), len(registry.authorizations())

    for namespace, (_, _, image) in tenants.items():
        pod = prewarm_pod("app", namespace, node, image.ref, imagePullSecrets=[{"name": "pull"}])
        create(cluster, pod)
        wait_ready(cluster, node, image.ref, agent, operator)
    time.sleep(TOKEN_LIFETIME)  # every token of the prewarms has expired
    for _, _, image in tenants.values():
        assert read_all(mount_layers(agent, image)) > 0

    # At the token server: each user asked only for its own repository, and was never
    # refused; nobody asked anonymously (no read went without its credentials).
    asked = tokens.requests[admin_requests:]
    by_user: dict[str, set[str]] = {}
    for request in asked:
        assert request.status == 200, request
        for scope in request.scopes:
            by_user.setdefault(request.account, set()).add(scope.split(":")[1])
    assert by_user == {"alice": {image_a.repository}, "bob": {image_b.repository}}
    # At the registry: the lazy reads went to each repository with its own user's token.
    for _, _, image in tenants.values():
        for layer in image.layers:
            ranges = registry.blob_gets(layer.digest, image.repository)
            assert any(r.status == 206 for r in ranges), layer.digest
    # And the registry refused none of the agent's requests (a token of the other tenant's
    # would be refused there: it grants nothing on this repository).
    outcomes = {(a.repository, a.outcome) for a in registry.authorizations()[admin_reads:]}
    assert (image_a.repository, "authorized") in outcomes
    assert (image_b.repository, "authorized") in outcomes
    assert not {outcome for _, outcome in outcomes} - {"authorized", "anonymous"}, outcomes


def _private_setup(
    cluster: KubeCluster,
    namespace: str,
    registry: RegistryServer,
    image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
    node: str,
    *operator_args: str,
) -> tuple[PrivateImage, Any, Any]:
    """An htpasswd registry whose one user's password is in the namespace's secret ``pull``;
    the image prewarmed on ``node``'s agent (which has no credentials of its own)."""
    login = (registry.username, registry.password)
    private = push_private(image, registry, "private/busybox", login, tmp_path / "dc")
    create(cluster, pull_secret(namespace, "pull", registry.host, *login))
    agent = node_agent(agent_factory, registry, cluster, node)
    operator = operator_factory(cluster.kubeconfig, *operator_args)
    pod = prewarm_pod("app", namespace, node, private.ref, imagePullSecrets=[{"name": "pull"}])
    create(cluster, pod)
    wait_ready(cluster, node, private.ref, agent, operator)
    return private, agent, operator


def test_a_rotated_secret_is_picked_up_after_a_refusal_without_a_restart(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    cluster, registry = lazyimage_crds, auth_registry
    image, agent, _ = _private_setup(
        cluster, kube_namespace, registry, busybox_image, agent_factory, operator_factory,
        tmp_path, "rotation-node",
    )  # fmt: skip
    layers = mount_layers(agent, image)
    user, old = registry.username, registry.password
    # The admin rotates the password at the registry, and the namespace's secret with it.
    registry.set_logins({user: "r0tated-Pa55"})
    rotated = pull_secret(kube_namespace, "pull", registry.host, user, "r0tated-Pa55")
    cluster.kubectl("replace", "-f", "-", input=json.dumps(rotated))
    before = len(registry.authorizations())

    assert read_all(layers) > 0, agent.log()

    assert agent.proc.poll() is None  # the same agent process throughout
    seen = registry.authorizations()[before:]
    # The old password was refused (for the reads in flight when that was found out), the
    # secret read again once, and the new password (the only login there is) served the rest.
    assert seen[0] == Authorization("refused", user, image.repository), seen
    assert {a.user for a in seen if a.outcome == "refused"} == {user}
    assert "anonymous" not in {a.outcome for a in seen}
    assert seen[-1].outcome == "authorized", seen
    assert agent.log().count(f"credentials of secret {kube_namespace}/pull changed") == 1
    assert old != registry.password


def test_a_deleted_secret_stops_being_used_at_its_next_order(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    """Deleted while the registry still accepts its password: the next order naming it reads
    it by name, finds it gone, fails saying so, and the agent stops using it."""
    cluster, registry = lazyimage_crds, auth_registry
    image, agent, operator = _private_setup(
        cluster, kube_namespace, registry, busybox_image, agent_factory, operator_factory,
        tmp_path, "deletion-node", "--order-refresh", "1",
    )  # fmt: skip
    layers = mount_layers(agent, image)
    cluster.kubectl("delete", "secret", "pull", "-n", kube_namespace)
    first = node_image(cluster, "deletion-node", image.ref)
    assert first is not None
    time.sleep(1.1)  # older than --order-refresh: a new pod's order is issued again
    again = prewarm_pod(
        "again", kube_namespace, "deletion-node", image.ref, imagePullSecrets=[{"name": "pull"}]
    )
    create(cluster, again)
    report = wait_for(
        "the order issued again to fail",
        lambda: (
            (r := node_image(cluster, "deletion-node", image.ref))
            and r["issuedAt"] != first["issuedAt"]
            and r["state"] == "Failed"
            and r
        ),
        60,
        lambda: agent.log() + operator.log(),
    )
    assert f"pull secret {kube_namespace}/pull not found" in report["message"]
    before = len(registry.authorizations())

    with pytest.raises(OSError):
        read_all(layers)

    # The agent tried, anonymously (it has nothing else), and never sent the deleted secret.
    seen = registry.authorizations()[before:]
    assert seen and {a.outcome for a in seen} == {"anonymous"}, (seen, agent.log())


def test_a_deleted_secret_is_noticed_when_the_registry_refuses_it(
    lazyimage_crds: KubeCluster,
    kube_namespace: str,
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    operator_factory: Any,
    tmp_path: Path,
) -> None:
    """Revoked at the registry and deleted: the refusal makes the agent read the secret
    again, find it gone and drop it, and later reads do not send it again."""
    cluster, registry = lazyimage_crds, auth_registry
    image, agent, _ = _private_setup(
        cluster, kube_namespace, registry, busybox_image, agent_factory, operator_factory,
        tmp_path, "revoked-node",
    )  # fmt: skip
    layers = mount_layers(agent, image)
    user = registry.username
    registry.set_logins({"someone-else": "0ther-Pa55"})
    cluster.kubectl("delete", "secret", "pull", "-n", kube_namespace)
    before = len(registry.authorizations())

    with pytest.raises(OSError):
        read_all(layers)
    seen = registry.authorizations()[before:]
    # Refused (for the reads in flight when that was found out), then the secret was read
    # again, found gone and dropped, and the read went on anonymously.
    assert seen[0] == Authorization("refused", user, image.repository), seen
    assert {a.outcome for a in seen} == {"refused", "anonymous"}, seen
    assert f"credentials of secret {kube_namespace}/pull dropped" in agent.log()
    after = len(registry.authorizations())

    for _ in range(2):
        with pytest.raises(OSError):
            read_all(layers)

    # Later reads go anonymously: the deleted secret is sent no more.
    seen = registry.authorizations()[after:]
    assert seen and {a.outcome for a in seen} == {"anonymous"}, seen


def test_the_nodes_docker_config_is_read_again_when_it_changes(
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
) -> None:
    """The node's own credentials (``--docker-config``, no API server): a password changed at
    the registry and in the file is used without restarting the agent."""
    registry = auth_registry
    login = (registry.username, registry.password)
    image = push_private(busybox_image, registry, "node/busybox", login, tmp_path / "dc")
    config = _docker_config(tmp_path / "node", registry.host, *login)
    agent = agent_factory(
        [registry.host], extra=["--docker-config", str(config), "--no-background-fill"]
    )
    layers = mount_layers(agent, image)
    registry.set_logins({login[0]: "n0de-Pa55"})
    _docker_config(tmp_path / "node", registry.host, login[0], "n0de-Pa55")
    before = len(registry.authorizations())

    assert read_all(layers) > 0, agent.log()

    seen = registry.authorizations()[before:]
    assert seen and seen[-1].outcome == "authorized", seen
    assert "anonymous" not in {a.outcome for a in seen}
    assert f"docker config {config} read again" in agent.log()
    assert agent.proc.poll() is None
