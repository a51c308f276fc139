"""KubeClient against a real kube-apiserver (the ``kube_cluster`` fixture), under trio, the
agent's event loop: config loading as kubectl writes it, the verbs, watch_object, strict field
validation, optimistic concurrency and RBAC errors, on ConfigMaps and on LazyImageNodes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from lazyimage.kube import (
    ConflictError,
    KubeClient,
    KubeConfig,
    KubeError,
    NotFoundError,
    ResourcePath,
)

from tests.fixtures.kube import KubeCluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    # Closing a watch before its stream ends leaves httpx 0.28's and httpcore's nested body
    # generators to the garbage collector, which trio reports (encode/httpx#3686).
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpx\.:ResourceWarning"),
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpcore\.:ResourceWarning"),
]

NODES = ResourcePath("lazyimage.io", "v1alpha1", "lazyimagenodes")
NAMESPACES = ResourcePath("", "v1", "namespaces")
TIMEOUT = 60


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent's event loop


@pytest.fixture
def config(kube_cluster: KubeCluster) -> KubeConfig:
    return KubeConfig.from_kubeconfig(kube_cluster.kubeconfig)


def _configmaps(namespace: str) -> ResourcePath:
    return ResourcePath("", "v1", "configmaps", namespace=namespace)


def _configmap(name: str, data: dict[str, str], **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data,
    }


async def _next(states: AsyncGenerator[dict[str, Any] | None, None]) -> dict[str, Any] | None:
    with anyio.fail_after(30):
        return await anext(states)


async def test_configmap_create_get_patch_delete(
    config: KubeConfig, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    path = _configmaps(kube_namespace)
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            created = await client.create(path, _configmap("settings", {"a": "1"}, app="li"))
            assert created["metadata"]["namespace"] == kube_namespace
            with pytest.raises(ConflictError, match="already exists"):
                await client.create(path, _configmap("settings", {}))

            got = await client.get(path, "settings")
            assert got["metadata"]["uid"] == created["metadata"]["uid"]
            assert got["data"] == {"a": "1"}

            patched = await client.merge_patch(path, "settings", {"data": {"a": None, "b": "2"}})
            assert patched["data"] == {"b": "2"}
            seen_by_kubectl = kube_cluster.kubectl_json(
                "get", "configmap", "settings", "-n", kube_namespace
            )
            assert seen_by_kubectl["data"] == {"b": "2"}

            await client.create(path, _configmap("unlabelled", {}))
            listed = await client.list(path, label_selector="app=li")
            assert [item["metadata"]["name"] for item in listed["items"]] == ["settings"]

            await client.delete(path, "settings")
            with pytest.raises(NotFoundError) as missing:
                await client.get(path, "settings")
    assert missing.value.status == 404 and missing.value.reason == "NotFound"
    assert str(missing.value) == (
        f'GET {path.item("settings")}: 404 NotFound: configmaps "settings" not found'
    )


async def test_watch_object_sees_create_change_and_delete(
    config: KubeConfig, kube_namespace: str
) -> None:
    path = _configmaps(kube_namespace)
    with anyio.fail_after(TIMEOUT):
        async with (
            KubeClient(config) as watcher,
            KubeClient(config) as writer,
            aclosing(watcher.watch_object(path, "watched")) as states,
        ):
            assert await _next(states) is None  # absent at first

            await writer.create(path, _configmap("watched", {"v": "1"}))
            await writer.create(path, _configmap("bystander", {"v": "x"}))
            created = await _next(states)
            assert created is not None and created["data"] == {"v": "1"}

            await writer.merge_patch(path, "bystander", {"data": {"v": "y"}})
            await writer.merge_patch(path, "watched", {"data": {"v": "2"}})
            changed = await _next(states)
            assert changed is not None and changed["data"] == {"v": "2"}
            assert changed["metadata"]["uid"] == created["metadata"]["uid"]

            await writer.delete(path, "watched")
            assert await _next(states) is None


async def test_strict_field_validation_names_the_unknown_field(
    config: KubeConfig, kube_namespace: str
) -> None:
    path = _configmaps(kube_namespace)
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            await client.create(path, _configmap("strict", {"a": "1"}))
            with pytest.raises(KubeError) as caught:
                await client.merge_patch(
                    path, "strict", {"bogusField": 1, "data": {"a": "2"}}, field_validation="Strict"
                )
            unchanged = await client.get(path, "strict")
    assert caught.value.status == 422 and caught.value.reason == "Invalid"
    message = str(caught.value)
    assert message.startswith(f"PATCH {path.item('strict')}: 422 Invalid: ")
    assert 'strict decoding error: unknown field "bogusField"' in message
    assert unchanged["data"] == {"a": "1"}  # nothing of the refused patch was applied


async def test_kubeconfig_as_kubectl_writes_it_and_with_relative_files(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    # kubectl's own YAML output of the fixture's kubeconfig (embedded data).
    flattened = tmp_path / "kubectl.yaml"
    flattened.write_text(kube_cluster.kubectl("config", "view", "--raw").stdout)
    # The same identity through file paths relative to the kubeconfig's directory.
    (tmp_path / "pki").mkdir()
    for name, source in (
        ("ca.crt", kube_cluster.ca_file),
        ("admin.crt", kube_cluster.client_cert),
        ("admin.key", kube_cluster.client_key),
    ):
        (tmp_path / "pki" / name).write_bytes(source.read_bytes())
    with_files = tmp_path / "files.yaml"
    with_files.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: test\n"
        "  cluster:\n"
        f"    server: {kube_cluster.server}\n"
        "    certificate-authority: pki/ca.crt\n"
        "users:\n"
        "- name: admin\n"
        "  user:\n"
        "    client-certificate: pki/admin.crt\n"
        "    client-key: pki/admin.key\n"
        "contexts:\n"
        "- name: test\n"
        '  context: {"cluster": "test", "user": "admin"}\n'
        "current-context: test\n"
    )
    with anyio.fail_after(TIMEOUT):
        for kubeconfig in (flattened, with_files):
            config = KubeConfig.load(kubeconfig)
            assert config.server == kube_cluster.server
            async with KubeClient(config) as client:
                namespace = await client.get(NAMESPACES, kube_namespace)
            assert namespace["metadata"]["name"] == kube_namespace


async def test_service_account_token_and_rbac_errors(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    kubeconfig = kube_cluster.service_account_kubeconfig(kube_namespace, "agent")
    config = KubeConfig.from_kubeconfig(kubeconfig)
    token = config.credentials.header
    assert token and config.client_cert_file is None
    path = _configmaps(kube_namespace)
    with anyio.fail_after(TIMEOUT):
        async with KubeClient(config) as client:
            with pytest.raises(KubeError) as caught:
                await client.list(path)
    assert caught.value.status == 403 and caught.value.reason == "Forbidden"
    message = str(caught.value)
    assert message.startswith(f"GET {path.collection()}: 403 Forbidden: ")
    assert f"system:serviceaccount:{kube_namespace}:agent" in message
    assert token.removeprefix("Bearer ") not in message


async def test_lazyimagenode_orders_and_status(
    config: KubeConfig, lazyimage_crds: KubeCluster
) -> None:
    """What the agent does with its node's object: follow it, report through status."""
    name = f"node-{secrets.token_hex(4)}"
    body = {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImageNode",
        "metadata": {"name": name},
        "spec": {},
    }
    order = {"image": "registry.test/app:1", "issuedAt": "2026-01-02T03:04:05Z"}
    async with KubeClient(config) as agent, KubeClient(config) as operator:
        try:
            with anyio.fail_after(TIMEOUT):
                created = await operator.create(NODES, body)
                async with aclosing(agent.watch_object(NODES, name)) as states:
                    first = await _next(states)
                    assert first is not None
                    assert first["metadata"]["uid"] == created["metadata"]["uid"]

                    await operator.merge_patch(NODES, name, {"spec": {"orders": [order]}})
                    ordered = await _next(states)
                    assert ordered is not None and ordered["spec"]["orders"] == [order]

                    report = {"status": {"orders": 1, "ready": 0}}
                    await agent.merge_patch(NODES, name, report, subresource="status")
                    reported = await _next(states)
                    assert reported is not None and reported["status"] == report["status"]

                    with pytest.raises(KubeError, match=r'unknown field \\?"status\.bogus'):
                        await agent.merge_patch(
                            NODES, name, {"status": {"bogus": 1}}, subresource="status"
                        )
                    stale = ordered | {"status": {"orders": 1, "ready": 1}}
                    with pytest.raises(ConflictError) as conflict:
                        await agent.replace_status(NODES, name, stale)
                    fresh = await agent.replace_status(
                        NODES, name, reported | {"status": {"orders": 1, "ready": 1}}
                    )
                    assert fresh["status"] == {"orders": 1, "ready": 1}
                    assert fresh["spec"]["orders"] == [order]  # status writes leave spec be
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10), suppress(NotFoundError):
                await operator.delete(NODES, name)
    assert conflict.value.status == 409
    assert f"PUT {NODES.item(name, 'status')}: 409 Conflict: " in str(conflict.value)
