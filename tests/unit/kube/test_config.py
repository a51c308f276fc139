"""KubeConfig as the kubernetes package loads it: kubeconfig files (merged as kubectl merges
$KUBECONFIG), exec credential plugins, the pod's service account, the search order, clear
errors for what cannot be loaded, the token kept current, and the TLS context."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lazyimage.kube import KubeClient, KubeConfig, KubeConfigError, KubeError, ResourcePath
from lazyimage.kube._auth import RECHECK_SECONDS, Credentials
from lazyimage.kube._source import InCluster, KubeconfigFiles, find_source
from lazyimage.kube._tls import ssl_context

from tests.fixtures.kube_exec import ExecPlugin, kubeconfig_doc

pytestmark = [pytest.mark.timeout(60)]

CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"
NAMESPACES = ResourcePath("", "v1", "namespaces")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# What `kubectl config view --raw` writes, with two clusters, users and contexts.
KUBECONFIG = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {_b64(CA)}
    server: https://127.0.0.1:6443
  name: local
- cluster:
    certificate-authority: certs/other-ca.crt
    server: "https://other.example:443"   # quoted, with a comment
    insecure-skip-tls-verify: false
    tls-server-name: kubernetes.default
  name: other
contexts:
- context:
    cluster: local
    user: admin
  name: admin@local
- context:
    cluster: other
    namespace: default
    user: robot
  name: robot@other
current-context: admin@local
kind: Config
preferences: {{}}
users:
- name: admin
  user:
    client-certificate-data: {_b64(CERT)}
    client-key-data: {_b64(KEY)}
- name: robot
  user:
    client-certificate: certs/robot.crt
    client-key: /ABSOLUTE/robot.key
    token: s3cr3t-token
"""


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _write_json(path: Path, doc: dict[str, Any]) -> Path:
    return _write(path, json.dumps(doc))


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    key = _write(tmp_path / "keys" / "robot.key", KEY)
    _write(tmp_path / "kc" / "certs" / "other-ca.crt", CA + b"other")
    _write(tmp_path / "kc" / "certs" / "robot.crt", CERT + b"robot")
    return _write(tmp_path / "kc" / "config", KUBECONFIG.replace("/ABSOLUTE/robot.key", str(key)))


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


# -- kubeconfig files --------------------------------------------------------------------------


def test_current_context_with_embedded_data(kubeconfig: Path) -> None:
    config = KubeConfig.from_kubeconfig(kubeconfig)
    assert config.server == "https://127.0.0.1:6443"
    # Embedded data is written to private files, as the kubernetes package does.
    assert _read(config.ca_file) == CA
    assert _read(config.client_cert_file) == CERT
    assert _read(config.client_key_file) == KEY
    assert config.client_key_file is not None and config.client_key_file.stat().st_mode & 0o077 == 0
    assert config.credentials.header is None
    assert config.verify is True
    assert config.tls_server_name is None


def test_named_context_with_files_relative_to_the_kubeconfig(kubeconfig: Path) -> None:
    config = KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    assert config.server == "https://other.example:443"
    assert _read(config.ca_file) == CA + b"other"
    assert _read(config.client_cert_file) == CERT + b"robot"
    assert _read(config.client_key_file) == KEY  # an absolute path is kept as it is
    assert config.credentials.header == "Bearer s3cr3t-token"
    assert config.tls_server_name == "kubernetes.default"


def test_token_file_insecure_and_anonymous(tmp_path: Path) -> None:
    _write(tmp_path / "tokens" / "u", "file-token\n")
    doc = kubeconfig_doc("https://k:6443", {"tokenFile": "tokens/u"})
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    config = KubeConfig.from_kubeconfig(_write_json(tmp_path / "config.json", doc))
    assert config.verify is False
    assert config.credentials.header == "Bearer file-token"
    assert config.ca_file is None

    plain = kubeconfig_doc("http://127.0.0.1:8080", {})
    del plain["contexts"][0]["context"]["user"]
    config = KubeConfig.from_dict(plain)
    assert config.server == "http://127.0.0.1:8080"
    assert config.credentials.header is None and config.client_cert_file is None


def test_repr_hides_secrets(kubeconfig: Path) -> None:
    config = KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    assert "s3cr3t-token" not in repr(config)
    assert "https://other.example:443" in repr(config)
    doc = kubeconfig_doc("https://k", {"token": "s3cr3t-token"})
    assert "s3cr3t-token" not in repr(KubeConfig.from_dict(doc))


def test_kubeconfig_files_merged_as_kubectl_merges_them(tmp_path: Path) -> None:
    """The first file to name a cluster, user or context wins, and the first file's
    current-context; relative paths are relative to the file that holds them."""
    first = kubeconfig_doc("https://first.example", {"token": "first-token"}, name="a")
    first["users"] = []  # user "a" comes from the second file
    first["clusters"][0]["cluster"]["certificate-authority"] = "ca.crt"
    _write(tmp_path / "one" / "ca.crt", CA + b"one")
    second = kubeconfig_doc("https://second.example", {"token": "second-token"}, name="b")
    second["users"].append({"name": "a", "user": {"token": "a-from-second"}})
    second["clusters"].append({"name": "a", "cluster": {"server": "https://shadowed.example"}})
    paths = (
        _write_json(tmp_path / "one" / "config", first),
        _write_json(tmp_path / "two" / "config", second),
    )
    config = KubeConfig.from_source(KubeconfigFiles(paths))
    assert config.server == "https://first.example"
    assert config.credentials.header == "Bearer a-from-second"
    assert _read(config.ca_file) == CA + b"one"
    other = KubeConfig.from_source(KubeconfigFiles(paths, context="b"))
    assert other.server == "https://second.example"
    assert other.credentials.header == "Bearer second-token"


# -- exec credential plugins -------------------------------------------------------------------


def test_exec_plugin_token(tmp_path: Path) -> None:
    plugin = ExecPlugin(tmp_path / "plugin", ["exec-token-1"])
    doc = kubeconfig_doc("https://127.0.0.1:6443", plugin.user())
    config = KubeConfig.from_kubeconfig(_write_json(tmp_path / "config", doc))
    assert config.credentials.header == "Bearer exec-token-1"
    assert plugin.runs == 1
    info = plugin.exec_info()[0]
    assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False


def test_exec_plugin_token_is_refreshed_when_it_expires(tmp_path: Path) -> None:
    """Within five minutes of its expirationTimestamp a token counts as expired; it is checked
    every RECHECK_SECONDS, in a worker thread."""
    plugin = ExecPlugin(tmp_path / "plugin", ["first", "second"], expires_in=60)
    source = KubeconfigFiles(
        (_write_json(tmp_path / "config", kubeconfig_doc("https://k", plugin.user())),)
    )
    now = [1000.0]
    credentials = Credentials(source.load(), source, clock=lambda: now[0])

    async def main() -> list[str | None]:
        seen = [await credentials.current()]
        now[0] += RECHECK_SECONDS - 1
        seen.append(await credentials.current())
        now[0] += 1
        seen.append(await credentials.current())
        return seen

    assert anyio.run(main, backend="trio") == ["Bearer first", "Bearer first", "Bearer second"]
    assert plugin.runs == 2


def test_a_failing_exec_plugin_is_a_clear_error(tmp_path: Path) -> None:
    plugin = ExecPlugin(tmp_path / "plugin", [], fail="error: no SSO session; run aws sso login")
    path = _write_json(tmp_path / "config", kubeconfig_doc("https://k", plugin.user()))
    with pytest.raises(KubeConfigError) as caught:
        KubeConfig.from_kubeconfig(path)
    assert str(caught.value) == (
        f"kubeconfig {path}: exec: process returned 1. error: no SSO session; run aws sso login"
    )


# -- what cannot be loaded ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("current-context: admin@local\n", ""), "key current-context"),
        (lambda t: t.replace("current-context: admin@local", "current-context: gone"), "gone"),
        (lambda t: t.replace("cluster: local\n", "cluster: nowhere\n"), "name nowhere"),
        (lambda t: t.replace("    server: https://127.0.0.1:6443\n", ""), "cluster has no server"),
        (lambda t: t.replace(_b64(CA), "not*base64"), "invalid base64 data"),
        (lambda t: t.replace("server: https://127.0.0.1:6443", "server: 127.0.0.1"), "http(s)"),
        (lambda t: t + "  bad: [indent\n", "not valid YAML: "),
        (lambda t: "just a string\n", "not a kubeconfig this client can read (TypeError"),
        (lambda t: "", "file is empty"),
    ],
)
def test_missing_or_bad_pieces(tmp_path: Path, edit: Callable[[str], str], message: str) -> None:
    path = _write(tmp_path / "edited", edit(KUBECONFIG))
    with pytest.raises(KubeConfigError) as caught:
        KubeConfig.from_kubeconfig(path)
    text = str(caught.value)
    assert message in text
    assert text.startswith(f"kubeconfig {path}: ")
    assert "\n" not in text and "Traceback" not in text
    assert "s3cr3t-token" not in text


def test_missing_files(kubeconfig: Path, tmp_path: Path) -> None:
    (kubeconfig.parent / "certs" / "robot.crt").unlink()
    with pytest.raises(KubeConfigError, match=r"File does not exist: .*robot\.crt"):
        KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    with pytest.raises(KubeConfigError, match=r"^kubeconfig .*absent: no such file$"):
        KubeConfig.from_kubeconfig(tmp_path / "absent")


# -- in-cluster --------------------------------------------------------------------------------


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "serviceaccount"
    _write(sa / "token", "pod-token\n")
    _write(sa / "ca.crt", CA)
    _write(sa / "namespace", "lazyimage-system")
    return sa


CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster(service_account: Path) -> None:
    config = KubeConfig.from_source(InCluster(CLUSTER_ENV, service_account))
    assert config.server == "https://10.96.0.1:443"
    assert config.ca_file == service_account / "ca.crt"
    assert config.credentials.header == "Bearer pod-token"  # the newline is not part of it


def test_in_cluster_token_rotation_is_read_after_a_401(service_account: Path) -> None:
    config = KubeConfig.from_source(InCluster(CLUSTER_ENV, service_account))
    (service_account / "token").write_text("rotated-token\n")
    renewed = anyio.run(config.credentials.renew, "Bearer pod-token", backend="trio")
    assert renewed == "Bearer rotated-token"


def test_in_cluster_ipv6(service_account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert KubeConfig.from_source(InCluster(env, service_account)).server == (
        "https://[fd00::1]:6443"
    )


def test_not_in_cluster(service_account: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"in-cluster service account .*host/port is not set"):
        KubeConfig.from_source(InCluster({"KUBERNETES_SERVICE_PORT": "443"}, service_account))
    (service_account / "ca.crt").unlink()
    with pytest.raises(KubeConfigError, match="certification file does not exist"):
        KubeConfig.from_source(InCluster(CLUSTER_ENV, service_account))


# -- the search order --------------------------------------------------------------------------


def test_search_order(tmp_path: Path, kubeconfig: Path, service_account: Path) -> None:
    home = tmp_path / "home"
    default = _write(home / ".kube" / "config", "unused")
    absent = tmp_path / "absent"

    assert find_source(kubeconfig, {"KUBECONFIG": "/nowhere"}, service_account, home) == (
        KubeconfigFiles((kubeconfig,))
    )
    # $KUBECONFIG: every file that exists, in order; before the service account.
    listed = {"KUBECONFIG": f"{absent}::{kubeconfig}:{default}", **CLUSTER_ENV}
    assert find_source(None, listed, service_account, home) == (
        KubeconfigFiles((kubeconfig, default))
    )
    assert find_source(None, CLUSTER_ENV, service_account, home) == (
        InCluster(CLUSTER_ENV, service_account)
    )
    assert find_source(None, {}, service_account, home) == KubeconfigFiles((default,))


def test_search_finds_nothing(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"none of the files in \$KUBECONFIG exists: /a:/b"):
        find_source(None, {"KUBECONFIG": "/a:/b"}, tmp_path / "no-sa", tmp_path / "no-home")
    with pytest.raises(KubeConfigError, match="no Kubernetes configuration") as caught:
        find_source(None, {}, tmp_path / "no-sa", tmp_path / "no-home")
    assert "no-home" in str(caught.value)


def test_load_reads_kubeconfig_from_the_environment(
    tmp_path: Path, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{kubeconfig}")
    assert KubeConfig.load().server == "https://127.0.0.1:6443"
    loaded = anyio.run(KubeConfig.load_async, None, backend="trio")
    assert loaded.server == "https://127.0.0.1:6443"


# -- the token as sent, renewed after a 401 ----------------------------------------------------


def _unauthorized() -> httpx.Response:
    status = {"kind": "Status", "code": 401, "reason": "Unauthorized", "message": "nope"}
    return httpx.Response(401, json=status)


def _exec_config(tmp_path: Path, tokens: list[str]) -> tuple[KubeConfig, ExecPlugin]:
    plugin = ExecPlugin(tmp_path / "plugin", tokens)
    doc = kubeconfig_doc("https://kube.test:6443", plugin.user())
    return KubeConfig.from_kubeconfig(_write_json(tmp_path / "config", doc)), plugin


def test_a_401_runs_the_exec_plugin_again_once_for_all_requests(tmp_path: Path) -> None:
    config, plugin = _exec_config(tmp_path, ["expired", "fresh"])
    seen: list[str] = []
    requests = 4
    all_refused = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer fresh":
            return httpx.Response(200, json={"kind": "Namespace"})
        # Every request is refused before any renews: they all hold the same stale token.
        if len(seen) == requests:
            all_refused.set()
        await all_refused.wait()
        return _unauthorized()

    async def main() -> None:
        with anyio.fail_after(20):
            async with (
                KubeClient(config, transport=httpx.MockTransport(handler)) as client,
                anyio.create_task_group() as group,
            ):
                for _ in range(requests):
                    group.start_soon(client.get, NAMESPACES, "a")

    anyio.run(main, backend="trio")
    assert plugin.runs == 2  # at load, and once after the 401s
    assert seen == ["Bearer expired"] * requests + ["Bearer fresh"] * requests


def test_a_401_that_renewal_cannot_cure_is_an_error(tmp_path: Path) -> None:
    config, plugin = _exec_config(tmp_path, ["refused"])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return _unauthorized()

    async def main() -> KubeError:
        with anyio.fail_after(20):
            async with KubeClient(config, transport=httpx.MockTransport(handler)) as client:
                with pytest.raises(KubeError) as first:
                    await client.get(NAMESPACES, "a")
                with pytest.raises(KubeError):
                    await client.get(NAMESPACES, "a")
        return first.value

    error = anyio.run(main, backend="asyncio")
    assert error.status == 401
    assert str(error) == "GET /api/v1/namespaces/a: 401 Unauthorized: nope"
    # Renewed once (the same token again: not re-sent); not again so soon after.
    assert plugin.runs == 2
    assert seen == ["Bearer refused", "Bearer refused"]


def test_a_plugin_that_fails_on_renewal_fails_the_request_clearly(tmp_path: Path) -> None:
    config, plugin = _exec_config(tmp_path, ["expired"])
    plugin.configure([], fail="token endpoint unreachable")

    async def main() -> None:
        with anyio.fail_after(20):
            transport = httpx.MockTransport(lambda _: _unauthorized())
            async with KubeClient(config, transport=transport) as client:
                await client.get(NAMESPACES, "a")

    with pytest.raises(KubeConfigError, match=r"exec: process returned 1\. token endpoint"):
        anyio.run(main, backend="trio")


# -- TLS ---------------------------------------------------------------------------------------


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:a")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _tls_config(ca: bytes | None, cert: bytes, key: bytes, *, insecure: bool = False) -> KubeConfig:
    cluster: dict[str, Any] = {"server": "https://k"}
    if ca is not None:
        cluster["certificate-authority-data"] = _b64(ca)
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    doc = kubeconfig_doc("https://k", {"client-certificate-data": _b64(cert)})
    doc["users"][0]["user"]["client-key-data"] = _b64(key)
    doc["clusters"][0]["cluster"] = cluster
    return KubeConfig.from_dict(doc)


def test_ssl_context_with_client_cert_and_ca() -> None:
    cert, key = _self_signed()
    context = ssl_context(_tls_config(cert, cert, key))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509"] == 1  # only the cluster CA, not the system's
    insecure = ssl_context(_tls_config(None, cert, key, insecure=True))
    assert insecure.verify_mode == ssl.CERT_NONE


def test_ssl_context_bad_material() -> None:
    cert, _ = _self_signed()
    _, other_key = _self_signed()
    with pytest.raises(KubeConfigError, match="invalid client certificate or key"):
        ssl_context(_tls_config(cert, cert, other_key))
    with pytest.raises(KubeConfigError, match="invalid certificate authority"):
        ssl_context(_tls_config(CA, cert, other_key))
