"""A layer opened once opens again from the stored TOC, with no request, after a prewarm and
after a restart; a damaged stored TOC is refused and fetched again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _blob_requests(registry: RegistryServer, digests: list[str]) -> int:
    return sum(len(registry.blob_gets(d)) for d in digests) + sum(
        1 for r in registry.access_log() if r.method == "HEAD" and "/blobs/" in r.path
    )


# A fresh mount at each start (the takeover, which opens the layers before any request, is
# tested in tests/integration/cri/test_cri_takeover.py).
NO_HOLDER = ["--no-background-fill", "--no-fuse-holder"]


def test_prewarmed_layers_mount_without_requests(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    digests = [layer.digest for layer in image.layers]
    state = tmp_path / "state"
    agent = agent_factory([registry.host], extra=NO_HOLDER, state_dir=state)
    for layer in image.layers:  # a prewarm order: TOC and zone, nothing mounted
        body = {"ref": image.ref, "digest": layer.digest, "tocDigest": image.toc(layer)}
        agent.request("POST", "/v1/prefetch", body)
    assert len(list((state / "tocs").iterdir())) == len(image.layers)

    registry.clear_access_log()
    paths = [
        Path(agent.mount(image.ref, layer.digest, image.toc(layer))["path"])
        for layer in image.layers
    ]
    assert _blob_requests(registry, digests) == 0
    assert (paths[0] / "etc/os-release").read_bytes().startswith(b"PRETTY_NAME")
    assert _blob_requests(registry, digests) > 0  # file data is still fetched on demand
    agent.stop()

    # After a restart, and with one stored TOC damaged: that one is refused and fetched.
    damaged = state / "tocs" / image.layers[1].digest.split(":", 1)[1]
    data = bytearray(damaged.read_bytes())
    data[-200] ^= 0xFF  # inside the TOC member: bad gzip, or a TOC with another digest
    damaged.write_bytes(bytes(data))
    again = agent_factory([registry.host], extra=NO_HOLDER, state_dir=state)
    registry.clear_access_log()
    for layer in image.layers:
        again.mount(image.ref, layer.digest, image.toc(layer))
    assert [len(registry.blob_gets(d)) for d in digests] == [0, 2, 0]  # footer and TOC
    events = [e for e in again.log_events() if e.get("event") == "stored_toc_refused"]
    assert [e["layer"] for e in events] == [image.layers[1].digest]
    assert damaged.read_bytes() != bytes(data)  # stored again, as fetched
