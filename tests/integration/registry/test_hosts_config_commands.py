"""The commands read containerd's registry configuration: ``lazyimage --registry-config`` and
``lazyimage-agent --registry-config`` reach a registry that only certs.d makes reachable, and
a bad hosts.toml stops the command but never the agent."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from lazyimage import estargz
from lazyimage.oci import Descriptor, Manifest
from lazyimage.registry import Reference, RegistryClient, RegistryHosts

from tests.fixtures.images import TestImage
from tests.fixtures.registry import REGISTRY_BINARY, RegistryServer, RegistryTLS
from tests.fixtures.tls import TestCA
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.convert.cli import lazyimage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FILE = "bin/busybox"


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    if not shutil.which(REGISTRY_BINARY):
        pytest.fail(f"{REGISTRY_BINARY} is missing: run scripts/setup")
    pki = tmp_path / "pki"
    ca = TestCA.create(pki, "registry")
    server = ca.server(pki, "registry", ["127.0.0.1"])
    with RegistryServer(
        tmp_path / "tls-registry", tls=RegistryTLS(server.cert, server.key, ca.path)
    ) as registry:
        yield registry


def _layers(ref: str, certs_d: Path | None, insecure: tuple[str, ...] = ()) -> list[Descriptor]:
    async def fetch() -> list[Descriptor]:
        hosts = RegistryHosts(certs_d, strict=True) if certs_d else None
        async with RegistryClient(hosts=hosts, insecure_registries=insecure) as client:
            fetched = await client.get_manifest(Reference.parse(ref))
            return Manifest.parse(fetched.data, fetched.media_type).layers

    return anyio.run(fetch)


def _check_file(registry: RegistryServer, layer: Descriptor, mounted: Path) -> None:
    """The file read through the mount is the one the layer's TOC describes."""
    data = registry.blob_path(layer.digest).read_bytes()
    toc = estargz.open_toc(lambda offset, size: data[offset : offset + size], len(data))
    node = toc.lookup(FILE)
    assert node is not None
    read = (mounted / FILE).read_bytes()
    assert len(read) == node.size > 0
    assert f"sha256:{hashlib.sha256(read).hexdigest()}" == node.entry.digest


def test_the_commands_reach_a_private_ca_registry_through_certs_d(
    tls_registry: RegistryServer, busybox_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    certs_d = tmp_path / "certs.d"
    host_dir = certs_d / tls_registry.host
    host_dir.mkdir(parents=True)
    assert tls_registry.tls is not None
    shutil.copy(tls_registry.tls.ca, host_dir / "registry-ca.pem")
    (host_dir / "hosts.toml").write_text('ca = "registry-ca.pem"\n')
    config = ("--registry-config", str(certs_d))
    source, target = f"{tls_registry.host}/box:gzip", f"{tls_registry.host}/box:esgz"

    refused = lazyimage("copy", busybox_image.ref, source, "--registry-config", "")
    assert refused.code == 2, refused.err
    assert f"the TLS certificate of {tls_registry.host} is not trusted" in refused.err
    assert "Traceback" not in refused.err
    for args in (("copy", busybox_image.ref, source), ("convert", source, target)):
        done = lazyimage(*args, *config)
        assert done.code == 0, done.err
    # The variable does what the flag does.
    env = {**os.environ, "LAZYIMAGE_REGISTRY_CONFIG": str(certs_d)}
    inspected = lazyimage("inspect", target, env=env)
    assert inspected.code == 0, inspected.err

    layer = _layers(target, certs_d)[0]
    toc = layer.annotations["containerd.io/snapshot/stargz/toc.digest"]
    agent = agent_factory([], extra=[*config, "--no-background-fill"])
    mounted = Path(agent.mount(target, layer.digest, toc)["path"])
    _check_file(tls_registry, layer, mounted)


def test_a_bad_hosts_toml_stops_the_command_but_not_the_agent(
    registry: RegistryServer, busybox_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(busybox_image, registry, "box")
    certs_d = tmp_path / "certs.d"
    hosts_file = certs_d / registry.host / "hosts.toml"
    hosts_file.parent.mkdir(parents=True)
    hosts_file.write_text('[host."http://127.0.0.1:9"]\ncapabilities = ["pull", "fly"]\n')
    expected = f"{hosts_file}: host.\"http://127.0.0.1:9\".capabilities: unknown capability 'fly'"

    result = lazyimage(
        "inspect",
        image.ref,
        "--insecure-registry",
        registry.host,
        "--registry-config",
        str(certs_d),
    )
    assert result.code == 2
    assert expected in result.err
    assert "Traceback" not in result.err

    # The agent logs it, skips the file, and reaches the registry as if it were not there.
    layer = image.layers[0]
    agent = agent_factory([registry.host], extra=["--registry-config", str(certs_d)])
    mounted = Path(agent.mount(image.ref, layer.digest, image.toc(layer))["path"])
    _check_file(registry, layer, mounted)
    assert expected in agent.log_text()
    assert agent.request("GET", "/healthz") == "ok\n"
