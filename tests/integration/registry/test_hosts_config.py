"""containerd's registry configuration (certs.d) against real registries behind TLS: a private
CA, certificates refused either way, skip_verify, client certificates, mirrors and servers."""

from __future__ import annotations

import contextlib
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lazyimage.errors import TLSError
from lazyimage.registry import Reference, RegistryClient, RegistryHosts, RetryPolicy

from tests.fixtures.registry import REGISTRY_BINARY, RegistryServer, RegistryTLS
from tests.fixtures.tls import TestCA
from tests.integration.registry.helpers import PushedImage, push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(90)]

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, total_timeout=20.0)


@dataclass(frozen=True)
class PKI:
    directory: Path
    ca: TestCA

    def registry_tls(self, name: str, *, client_ca: TestCA | None = None) -> RegistryTLS:
        server = self.ca.server(self.directory, name, ["127.0.0.1", "localhost"])
        harness = None
        if client_ca is not None:
            issued = client_ca.client(self.directory, f"{name}-harness")
            harness = (issued.cert, issued.key)
        return RegistryTLS(
            server.cert,
            server.key,
            self.ca.path,
            client_ca.path if client_ca is not None else None,
            harness,
        )


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path / "pki", TestCA.create(tmp_path / "pki", "registry"))


@pytest.fixture
def certs_d(tmp_path: Path) -> Path:
    path = tmp_path / "certs.d"
    path.mkdir()
    return path


@contextlib.contextmanager
def _serving(tmp_path: Path, name: str, tls: RegistryTLS | None) -> Iterator[RegistryServer]:
    if not shutil.which(REGISTRY_BINARY):
        pytest.fail(f"{REGISTRY_BINARY} is missing: run scripts/setup")
    with RegistryServer(tmp_path / name, tls=tls) as server:
        yield server


@pytest.fixture
def tls_registry(tmp_path: Path, pki: PKI) -> Iterator[RegistryServer]:
    """A registry whose certificate a CA of its own signed, which nothing trusts by default."""
    with _serving(tmp_path, "tls-registry", pki.registry_tls("tls-registry")) as server:
        yield server


def _hosts_toml(certs_d: Path, directory: str, text: str) -> Path:
    (certs_d / directory).mkdir(parents=True, exist_ok=True)
    path = certs_d / directory / "hosts.toml"
    path.write_text(text)
    return path


def _trust(certs_d: Path, server: RegistryServer, pki: PKI) -> None:
    _hosts_toml(certs_d, server.host, f'ca = "{pki.ca.path}"\n')


def _client(certs_d: Path, insecure: tuple[str, ...] = ()) -> RegistryClient:
    hosts = RegistryHosts(certs_d, strict=True)
    return RegistryClient(hosts=hosts, insecure_registries=insecure, retry=FAST)


async def _push(client: RegistryClient, ref: Reference, seed: int) -> PushedImage:
    return await push_image(client, ref, [random_bytes(3000, seed)])


async def test_a_private_ca_named_in_hosts_toml_is_trusted(
    tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    port = tls_registry.port
    # The directory containerd looks at first for a registry with a port: host_port_.
    shutil.copy(pki.ca.path, certs_d / "ca.pem")
    _hosts_toml(certs_d, f"127.0.0.1_{port}_", 'ca = "../ca.pem"\n')
    ref = Reference.parse(f"{tls_registry.host}/private/app:1")
    async with _client(certs_d) as client:
        image = await _push(client, ref, 1)
        resolved = await client.resolve_image(ref)
        assert resolved.manifest_digest == image.manifest_digest
        assert (
            await client.read_range(ref, image.layer_digests[0], 10, 20) == image.layers[0][10:30]
        )
    assert [r.status for r in tls_registry.blob_gets(image.layer_digests[0])] == [206]


async def test_the_docker_certificate_layout_works_too(
    tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    directory = certs_d / tls_registry.host
    directory.mkdir()
    shutil.copy(pki.ca.path, directory / "ca.crt")
    ref = Reference.parse(f"{tls_registry.host}/docker-layout/app:1")
    async with _client(certs_d) as client:
        image = await _push(client, ref, 2)
        assert await client.get_blob(ref, image.layer_digests[0]) == image.layers[0]


async def test_an_unknown_ca_is_refused_at_once_with_the_reason(
    tls_registry: RegistryServer, certs_d: Path
) -> None:
    ref = Reference.parse(f"{tls_registry.host}/private/app:1")
    async with _client(certs_d) as client:
        with pytest.raises(TLSError) as caught:
            await client.get_manifest(ref)
    message = str(caught.value)
    assert f"the TLS certificate of {tls_registry.host} is not trusted" in message
    assert "certificate" in message.split("not trusted", 1)[1]  # OpenSSL's own reason
    assert "name its CA with `ca` in the registry's hosts.toml" in message
    assert "attempt" not in message  # not retried: retrying cannot mend it
    assert tls_registry.access_log() == []


async def test_skip_verify_talks_to_a_registry_it_cannot_verify(
    tls_registry: RegistryServer, certs_d: Path
) -> None:
    _hosts_toml(certs_d, tls_registry.host, "skip_verify = true\n")
    ref = Reference.parse(f"{tls_registry.host}/unverified/app:1")
    async with _client(certs_d) as client:
        image = await _push(client, ref, 3)
        assert (await client.resolve_image(ref)).manifest_digest == image.manifest_digest


async def test_a_registry_that_wants_a_client_certificate(
    tmp_path: Path, pki: PKI, certs_d: Path
) -> None:
    clients = TestCA.create(tmp_path / "client-pki", "clients")
    tls = pki.registry_tls("mtls-registry", client_ca=clients)
    mine = clients.client(tmp_path / "node-certs", "node")
    with _serving(tmp_path, "mtls-registry", tls) as server:
        ref = Reference.parse(f"{server.host}/mtls/app:1")
        hosts_file = _hosts_toml(
            certs_d,
            server.host,
            f'ca = "{pki.ca.path}"\nclient = [["{mine.cert}", "{mine.key}"]]\n',
        )
        async with _client(certs_d) as client:
            image = await _push(client, ref, 4)
            assert await client.get_blob(ref, image.layer_digests[0]) == image.layers[0]

        hosts_file.write_text(f'ca = "{pki.ca.path}"\n')
        async with _client(certs_d) as client:
            with pytest.raises(TLSError) as caught:
                await client.get_manifest(ref)
        assert f"{server.host} refused the TLS handshake for want of a client certificate" in str(
            caught.value
        )
        assert "give one with `client`" in str(caught.value)
        assert "plain http" not in str(caught.value)


async def test_a_mirror_in_hosts_toml_serves_pulls_when_the_registry_is_down(
    tmp_path: Path, tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    """The mirror is the TLS registry; the registry the references name is stopped."""
    _trust(certs_d, tls_registry, pki)
    with _serving(tmp_path, "upstream", None) as upstream:
        mirror_ca = certs_d / upstream.host / "mirror-ca.pem"
        _hosts_toml(
            certs_d,
            upstream.host,
            f"""
            [host."https://{tls_registry.host}"]
              capabilities = ["pull", "resolve"]
              ca = "mirror-ca.pem"
            """,
        )
        shutil.copy(pki.ca.path, mirror_ca)
        # The mirror holds the image under the same repository, as a pull-through cache does.
        async with _client(certs_d) as seeding:
            image = await _push(seeding, Reference.parse(f"{tls_registry.host}/team/app:1"), 5)
        tls_registry.clear_access_log()
        upstream.stop()
        ref = Reference.parse(f"{upstream.host}/team/app:1")
        async with _client(certs_d, (upstream.host,)) as client:
            resolved = await client.resolve_image(ref)
            assert resolved.manifest_digest == image.manifest_digest
            data = await client.read_range(ref, image.layer_digests[0], 0, 100)
            assert data == image.layers[0][:100]
        served = tls_registry.access_log()
        assert [(r.method, r.status) for r in served] == [("GET", 200), ("GET", 206)]
        assert all(
            urllib.parse.parse_qs(urllib.parse.urlsplit(r.target).query)["ns"] == [upstream.host]
            for r in served
        )


async def test_a_pull_only_mirror_never_resolves_a_tag(
    tmp_path: Path, tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    _trust(certs_d, tls_registry, pki)
    with _serving(tmp_path, "upstream", None) as upstream:
        _hosts_toml(
            certs_d,
            upstream.host,
            f"""
            [host."https://{tls_registry.host}"]
              capabilities = ["pull"]
              ca = "{pki.ca.path}"
            """,
        )
        ref = Reference.parse(f"{upstream.host}/team/app:1")
        async with RegistryClient(insecure_registries=(upstream.host,)) as plain:
            image = await _push(plain, ref, 6)
        async with _client(certs_d) as seeding:
            mirrored = Reference.parse(f"{tls_registry.host}/team/app:1")
            await push_image(seeding, mirrored, list(image.layers))
        tls_registry.clear_access_log()
        upstream.clear_access_log()
        async with _client(certs_d, (upstream.host,)) as client:
            resolved = await client.resolve_image(ref)
            assert await client.get_blob(ref, image.layer_digests[0]) == image.layers[0]
        assert resolved.manifest_digest == image.manifest_digest
        # The tag went to the registry; the blob came from the mirror.
        assert [r.path for r in upstream.access_log()] == ["/v2/team/app/manifests/1"]
        assert upstream.blob_gets(image.layer_digests[0]) == []
        assert [r.status for r in tls_registry.blob_gets(image.layer_digests[0])] == [200]


async def test_default_with_a_server_sends_every_registry_there(
    tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    """``_default`` applies to any registry without a directory; its ``server`` replaces
    the registry, and its headers go with each request."""
    _hosts_toml(
        certs_d,
        "_default",
        f"""
        server = "https://{tls_registry.host}"
        ca = "{pki.ca.path}"
        [header]
          user-agent = "certs.d-test-agent"
        """,
    )
    ref = Reference.parse("registry.invalid/central/app:1")
    async with _client(certs_d) as client:
        image = await _push(client, ref, 7)
        assert (await client.resolve_image(ref)).manifest_digest == image.manifest_digest
    log = tls_registry.access_log()
    assert log and {r.user_agent for r in log} == {"certs.d-test-agent"}
    # Upload URLs are the registry's own Location; every other request names the registry.
    named = [r for r in log if r.method in ("GET", "HEAD", "POST")]
    assert named and all("ns=registry.invalid" in r.target for r in named)


async def test_an_http_host_with_tls_settings_is_tried_in_https_first(
    registry: RegistryServer, tls_registry: RegistryServer, pki: PKI, certs_d: Path
) -> None:
    """containerd's rule (its "bypass TLS verification" example): written http:// but with TLS
    settings, a host is tried in https, and in plain http once it answers in plain http."""
    _hosts_toml(certs_d, registry.host, f'server = "http://{registry.host}"\nskip_verify = true\n')
    _hosts_toml(
        certs_d, tls_registry.host, f'server = "http://{tls_registry.host}"\nca = "{pki.ca.path}"\n'
    )
    plain = Reference.parse(f"{registry.host}/fallback/app:1")
    secure = Reference.parse(f"{tls_registry.host}/fallback/app:1")
    async with _client(certs_d) as client:
        first = await _push(client, plain, 8)
        assert (await client.resolve_image(plain)).manifest_digest == first.manifest_digest
        second = await _push(client, secure, 9)
        assert (await client.resolve_image(secure)).manifest_digest == second.manifest_digest
    # One plain GET /v2/ settled it for the plain registry; no request of the TLS one fell back.
    assert [r.path for r in registry.access_log()].count("/v2/") == 1
    assert "/v2/" not in [r.path for r in tls_registry.access_log()]
    assert [r.status for r in tls_registry.access_log() if "/manifests/" in r.path] == [201, 200]
