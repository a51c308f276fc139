"""A layer shared by two images in different repositories is mounted once, and read through
either repository: when the one it was mounted through stops serving it (its credentials
revoked, the blob unlinked there), reads go on through the other, verified as always."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from lazyimage import estargz

from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.convert.cli import lazyimage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_shared_layer_is_read_through_the_other_repository(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    first = push_estargz(python_image, registry, "tenant-a/python")
    second = f"{registry.host}/tenant-b/python:esgz"
    copied = lazyimage("copy", first.ref, second, "--insecure-registry", registry.host)
    assert copied.code == 0, copied.err
    layer = first.layers[1]  # the python layer, the same blob in both repositories
    agent = agent_factory([registry.host], extra=["--no-background-fill"])

    path = Path(agent.mount(first.ref, layer.digest, first.toc(layer))["path"])
    again = agent.mount(second, layer.digest, first.toc(layer))
    assert Path(again["path"]) == path  # mounted once, for both
    assert again["users"] == 2

    # Repository A no longer serves the blob; B still does.
    registry.delete_blob("tenant-a/python", layer.digest)
    registry.clear_access_log()
    data = registry.blob_path(layer.digest).read_bytes()
    toc = estargz.open_toc(lambda o, n: data[o : o + n], len(data))
    name = "usr/lib/python3.11/json/decoder.py"
    node = toc.lookup(name)
    assert node is not None
    read = (path / name).read_bytes()
    assert len(read) == node.size
    assert f"sha256:{hashlib.sha256(read).hexdigest()}" == node.entry.digest
    gets = {
        (r.path.split("/blobs/")[0], r.status) for r in registry.access_log() if r.method == "GET"
    }
    assert ("/v2/tenant-a/python", 404) in gets, gets
    assert ("/v2/tenant-b/python", 206) in gets, gets
    refused = [e for e in agent.log_events() if e.get("event") == "layer_source_refused"]
    assert refused and refused[0]["repository"] == f"{registry.host}/tenant-a/python"

    # The next read goes to B first: no more refusals from A.
    registry.clear_access_log()
    (path / "usr/lib/python3.11/json/encoder.py").read_bytes()
    assert all("/tenant-a/" not in r.path for r in registry.access_log()), registry.access_log()


def test_the_other_repository_survives_an_agent_restart(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    first = push_estargz(python_image, registry, "tenant-a/python")
    second = f"{registry.host}/tenant-b/python:esgz"
    assert lazyimage("copy", first.ref, second, "--insecure-registry", registry.host).code == 0
    layer = first.layers[1]
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    path = Path(agent.mount(first.ref, layer.digest, first.toc(layer))["path"])
    agent.mount(second, layer.digest, first.toc(layer))
    assert agent.stop() == 0  # the mount stays with the holder; the book keeps both
    registry.delete_blob("tenant-a/python", layer.digest)

    again = agent_factory(
        [registry.host], extra=["--no-background-fill"], state_dir=agent.state_dir
    )
    [described] = [d for d in again.request("GET", "/v1/layers") if d["digest"] == layer.digest]
    assert described["alsoThrough"] == [second]
    assert (path / "usr/lib/python3.11/json/decoder.py").read_bytes()  # through B
