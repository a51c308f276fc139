"""A prewarm pulls the image through the node's CRI socket, as kubelet would: containerd then
has the image, its layers committed as the agent's remote snapshots, so a pod that kubelet
starts finds it present and makes no pull of its own (``imagePullPolicy: IfNotPresent``).

The registry is private: containerd gets the credentials from the agent's pull, as it would
get a pod's pull secret from kubelet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentError
from tests.fixtures.cri import CRINodeFactory
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.convert.cli import lazyimage
from tests.integration.cri.helpers import (
    push_gzip,
    push_private_estargz,
    read_image,
    snapshot_results,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]


# The json package, which the probe imports, goes in the priority zone.
_ZONE = ("--prioritize", "usr/lib/python3.11/json/**")


def test_a_prewarmed_image_is_present_and_starts_without_a_pull(
    auth_registry: RegistryServer,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
    tmp_path: Path,
) -> None:
    ref, config = push_private_estargz(python_image, auth_registry, tmp_path, *_ZONE)
    image = read_image(auth_registry, ref, docker_config=config)
    agent = agent_factory(
        [auth_registry.host],
        extra=[
            "--docker-config", str(config),
            "--no-background-fill",
            "--cri-socket", str(cri_node_factory.next_cri_socket),
        ],
    )  # fmt: skip
    node = cri_node_factory(agent, [auth_registry], pause_registry=registry)
    assert node.client.image_status(ref) is None

    prewarmed = agent.request("POST", "/v1/images", {"image": ref})

    # containerd has the image under the name the pod uses, with the id kubelet would get.
    status = node.client.image_status(ref)
    assert status is not None
    assert prewarmed["imageId"] == status.id == image.manifest.config.digest
    assert prewarmed["layers"] == [layer.digest for layer in image.layers]
    assert prewarmed["zoneBytes"] > 0
    assert prewarmed["fetchedBytes"] > prewarmed["zoneBytes"] // 2  # the zones, by the mounts
    # Each layer is a remote snapshot, mounted by the agent; containerd downloaded none.
    held = node.content_digests()
    mounted = {layer["digest"] for layer in agent.request("GET", "/v1/layers")}
    for layer, result in zip(image.layers, snapshot_results(agent, image), strict=True):
        assert result is not None and result["remote_snapshot_prepared"] is True, result
        assert layer.digest in mounted
        assert layer.digest not in held

    # kubelet finds the image and goes straight to the pod: no manifest, no config, no pull.
    auth_registry.clear_access_log()
    run = node.run(ref, ["python3", "-c", PYTHON_PROBE_CODE], pull=False)
    assert run.exit_code == 0, (run.stderr, node.log())
    assert run.output == [PYTHON_PROBE_OUTPUT]
    requests = auth_registry.access_log()
    assert not [r for r in requests if "/manifests/" in r.path], requests
    assert not [r for r in requests if image.manifest.config.digest in r.path], requests


def test_a_failed_cri_pull_fails_the_prewarm_with_its_reason_and_keeps_the_zones(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
) -> None:
    source = push_gzip(python_image, registry, "public/python")
    ref = f"{registry.host}/public/python:esgz"
    done = lazyimage("convert", source, ref, *_ZONE, "--insecure-registry", registry.host)
    assert done.code == 0, done.err
    nothing = tmp_path / "no-containerd.sock"
    agent = agent_factory(
        [registry.host], extra=["--no-background-fill", "--cri-socket", str(nothing)]
    )

    with pytest.raises(AgentError) as failed:
        agent.request("POST", "/v1/images", {"image": ref})
    assert failed.value.status == 502
    assert "the node's pull failed" in str(failed.value)
    assert f"CRI PullImage {ref} on {nothing}" in str(failed.value)
    # The zones were fetched all the same: a second prewarm finds them cached.
    registry.clear_access_log()
    with pytest.raises(AgentError):
        agent.request("POST", "/v1/images", {"image": ref})
    image = read_image(registry, ref)
    assert sum(len(registry.blob_gets(layer.digest)) for layer in image.layers) == 0
    assert agent.request("GET", "/status")["ready"] is True
