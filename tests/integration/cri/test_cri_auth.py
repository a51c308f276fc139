"""A private registry (htpasswd Basic auth): containerd gets the credentials through CRI
PullImage's auth, as kubelet passes a pod's pull secret; the agent, to which containerd never
hands them, reads its own from ``--docker-config`` and mounts the layers lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cri import CRIError, CRINodeFactory, basic_auth
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.cri.helpers import push_private_estargz, read_image, snapshot_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]


def test_private_registry_pulls_lazily_with_the_agents_credentials(
    auth_registry: RegistryServer,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
    tmp_path: Path,
) -> None:
    ref, config = push_private_estargz(python_image, auth_registry, tmp_path)
    image = read_image(auth_registry, ref, docker_config=config)

    agent = agent_factory(
        [auth_registry.host], extra=["--docker-config", str(config), "--no-background-fill"]
    )
    # The pause image comes from a registry without auth, as a node's usually does.
    node = cri_node_factory(agent, [auth_registry], pause_registry=registry)

    with pytest.raises(CRIError, match=r"401|[Uu]nauthorized"):
        node.pull(ref)
    auth_registry.clear_access_log()
    run = node.run(ref, ["python3", "-c", PYTHON_PROBE_CODE], auth=basic_auth(auth_registry))
    assert run.exit_code == 0, (run.stderr, node.log())
    assert run.output == [PYTHON_PROBE_OUTPUT]

    for layer, result in zip(image.layers, snapshot_results(agent, image), strict=True):
        assert result is not None and result["remote_snapshot_prepared"] is True, result
        assert layer.digest not in node.content_digests()
        # The registry answered the agent's range reads (the log has no user name: it is
        # gorilla's combined format, which takes the user from the URL, not the header).
        reads = auth_registry.blob_gets(layer.digest)
        assert any(r.status == 206 and r.user_agent.startswith("lazyimage/") for r in reads)
