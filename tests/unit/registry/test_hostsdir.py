"""A containerd certs.d directory: which directory applies, the Docker certificate layout,
bad files skipped (or refused when strict), and files read again only when they change."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest
from lazyimage.errors import ConfigError
from lazyimage.registry._hostsdir import RegistryHosts, host_directories
from lazyimage.registry._hostsfile import ALL_CAPABILITIES, HostURL, TLSSettings

from tests.fixtures.tls import TestCA

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "certs.d"
    path.mkdir()
    return path


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "pki", "private")


def _subjects(context: ssl.SSLContext | None) -> list[str]:
    assert context is not None
    return [
        value
        for cert in context.get_ca_certs()
        for rdn in cert["subject"]
        for key, value in rdn
        if key == "commonName"
    ]


def test_directory_names_in_the_order_containerd_tries_them() -> None:
    assert host_directories("docker.io") == ["docker.io", "_default"]
    assert host_directories("localhost:5000") == ["localhost_5000_", "localhost:5000", "_default"]
    assert host_directories("[::1]:5000") == ["[::1]_5000_", "[::1]:5000", "_default"]
    assert host_directories("[::1]") == ["[::1]", "_default"]


def test_the_most_specific_directory_applies(root: Path) -> None:
    hosts = RegistryHosts(root)
    assert hosts.lookup("localhost:5000") is None
    for name, mirror in (
        ("_default", "default.example"),
        ("localhost:5000", "colon.example"),
        ("localhost_5000_", "underscore.example"),
    ):
        (root / name).mkdir()
        (root / name / "hosts.toml").write_text(f'[host."https://{mirror}"]\n')
        loaded = hosts.lookup("localhost:5000")
        assert loaded is not None
        assert loaded.source == root / name / "hosts.toml"
        assert loaded.hosts[0].host.url == HostURL("https", mirror, "/v2")
    # Every registry without a directory of its own gets _default.
    other = hosts.lookup("quay.io")
    assert other is not None and other.source == root / "_default" / "hosts.toml"


def test_without_hosts_toml_the_docker_certificate_files_apply(root: Path, ca: TestCA) -> None:
    directory = root / "registry.example:5000"
    pair = ca.client(directory, "me")
    pair.cert.rename(directory / "me.cert")  # Docker's name for a client certificate
    (directory / "ca.crt").write_bytes(ca.path.read_bytes())
    (directory / "notes.txt").write_text("not a certificate")
    (directory / "old.crt").mkdir()  # directories are not files, whatever their name
    loaded = RegistryHosts(root).lookup("registry.example:5000")
    assert loaded is not None and loaded.source == directory
    (only,) = loaded.hosts
    assert only.host.url is None and only.host.capabilities == ALL_CAPABILITIES
    assert only.host.tls == TLSSettings(
        ca_files=(directory / "ca.crt",),
        client_pairs=((directory / "me.cert", directory / "me.key"),),
    )
    assert "private test CA" in _subjects(only.ssl_context)


def test_a_ca_in_hosts_toml_adds_to_the_usual_trust(root: Path, ca: TestCA) -> None:
    directory = root / "registry.example"
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca.path.read_bytes())
    (directory / "hosts.toml").write_text(
        'ca = "ca.pem"\n[host."https://insecure.example"]\nskip_verify = true\n'
    )
    loaded = RegistryHosts(root).lookup("registry.example")
    assert loaded is not None
    mirror, server = loaded.hosts
    assert mirror.ssl_context is not None
    assert mirror.ssl_context.verify_mode == ssl.CERT_NONE
    assert not mirror.ssl_context.check_hostname
    subjects = _subjects(server.ssl_context)
    assert "private test CA" in subjects
    assert len(subjects) > 1  # the public CAs too


def test_a_bad_hosts_toml_is_logged_and_skipped_for_the_certificate_files(
    root: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    directory = root / "registry.example"
    directory.mkdir()
    (directory / "ca.crt").write_bytes(ca.path.read_bytes())
    hosts_file = directory / "hosts.toml"
    hosts_file.write_text('[host."https://m.example"]\ncapabilities = ["pull", "fly"]\n')
    hosts = RegistryHosts(root)
    with caplog.at_level(logging.ERROR, "lazyimage.registry"):
        loaded = hosts.lookup("registry.example")
        again = hosts.lookup("registry.example")
    assert loaded is not None and again is loaded
    assert loaded.source == directory
    assert "private test CA" in _subjects(loaded.hosts[0].ssl_context)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f'{hosts_file}: host."https://m.example".capabilities: unknown capability' in error
    assert f"using the certificate files in {directory}" in error

    with pytest.raises(ConfigError, match="unknown capability 'fly'"):
        RegistryHosts(root, strict=True).lookup("registry.example")
    # Other registries are not affected by it.
    assert RegistryHosts(root, strict=True).lookup("quay.io") is None


def test_a_certificate_that_cannot_be_loaded_is_named_with_its_key(
    root: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    directory = root / "registry.example"
    directory.mkdir()
    other = TestCA.create(root.parent / "other", "other")
    mine = ca.client(root.parent / "pki", "mine")
    theirs = other.client(root.parent / "other", "theirs")
    hosts_file = directory / "hosts.toml"
    cases = {
        '[host."https://m.example"]\nca = "missing.pem"\n': (
            f'{hosts_file}: host."https://m.example".ca: cannot load {directory / "missing.pem"}'
        ),
        f'ca = "{mine.key}"\n': f"{hosts_file}: ca: cannot load {mine.key}",
        f'client = [["{mine.cert}", "{theirs.key}"]]\n': (
            f"{hosts_file}: client: cannot load {mine.cert} and {theirs.key}"
        ),
    }
    for text, expected in cases.items():
        hosts_file.write_text(text)
        with pytest.raises(ConfigError) as caught:
            RegistryHosts(root, strict=True).lookup("registry.example")
        assert str(caught.value).startswith(expected), str(caught.value)
        caplog.clear()
        with caplog.at_level(logging.ERROR, "lazyimage.registry"):
            loaded = RegistryHosts(root).lookup("registry.example")
        # Skipped: the directory has no certificate files, so the registry gets no settings.
        assert loaded is not None and loaded.source == directory
        assert [h.ssl_context for h in loaded.hosts] == [None]
        assert expected in caplog.text


def test_files_are_read_again_only_when_they_change(root: Path, ca: TestCA) -> None:
    directory = root / "registry.example"
    directory.mkdir()
    hosts_file = directory / "hosts.toml"
    hosts_file.write_text('[host."https://one.example"]\n')
    hosts = RegistryHosts(root)
    first = hosts.lookup("registry.example")
    assert hosts.lookup("registry.example") is first

    hosts_file.write_text('[host."https://two.example"]\n')
    os.utime(hosts_file, ns=(1, 1))  # a change whatever the clock's resolution
    second = hosts.lookup("registry.example")
    assert second is not first and second is not None
    assert second.hosts[0].host.url == HostURL("https", "two.example", "/v2")

    # A certificate it names is watched too (a rotated CA).
    (directory / "ca.pem").write_bytes(ca.path.read_bytes())
    hosts_file.write_text('ca = "ca.pem"\n')
    third = hosts.lookup("registry.example")
    assert third is not second and hosts.lookup("registry.example") is third
    os.utime(directory / "ca.pem", ns=(2, 2))
    assert hosts.lookup("registry.example") is not third

    hosts_file.unlink()
    (directory / "ca.pem").unlink()
    directory.rmdir()
    assert hosts.lookup("registry.example") is None
