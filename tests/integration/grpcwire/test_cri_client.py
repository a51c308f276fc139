"""The agent's CRI image client (lazyimage.grpcwire underneath) against a real containerd's
CRI: ImageStatus and PullImage, containerd's own errors, and containerd restarting between
calls."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lazyimage.snapshotter import CriError, CriImageService

from tests.fixtures.cri import CRINode, push_pause_image
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def node(registry: RegistryServer, busybox_image: TestImage) -> Iterator[CRINode]:
    image = push_pause_image(busybox_image, registry)
    # containerd's socket path must stay under the 107 bytes of a unix socket address.
    with tempfile.TemporaryDirectory(prefix="lzcri-", dir="/tmp") as base:
        started = CRINode(Path(base), None, [registry.host], image)
        try:
            yield started.start()
        finally:
            started.cleanup()


def test_status_pull_errors_and_a_containerd_restart(node: CRINode) -> None:
    images = CriImageService(node.containerd.socket)
    try:
        ref = node.pause_image
        assert images.present(ref) is False
        image_id = images.pull(ref)
        status = node.client.image_status(ref)
        assert status is not None and image_id == status.id
        assert image_id.startswith("sha256:")
        assert images.present(ref) is True

        missing = ref.replace(":latest", ":missing")
        with pytest.raises(CriError) as failed:
            images.pull(missing)
        message = str(failed.value)
        assert message.startswith(f"CRI PullImage {missing} on {node.containerd.socket}: ")
        assert "not found" in message

        # The same client carries on with the restarted containerd.
        node.containerd.stop()
        with pytest.raises(CriError) as down:
            images.present(ref)
        assert "UNAVAILABLE: cannot connect to" in str(down.value)
        node.containerd.start()
        assert images.present(ref) is True
    finally:
        images.close()
    with pytest.raises(CriError, match="CANCELLED: the channel is closed"):
        images.present(ref)
