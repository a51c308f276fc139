"""KubeConfig loading (kubeconfig files, in-cluster files, the search order), the YAML subset
it reads, TLS material and the bearer token as sent."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lazyimage.kube import KubeClient, KubeConfig, KubeConfigError, KubeError, ResourcePath
from lazyimage.kube._config import _in_cluster, _load
from lazyimage.kube._tls import ssl_context
from lazyimage.kube._yaml import YamlError, load_yaml

CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"


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
    tokenFile: tokens/robot
"""


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    key = _write(tmp_path / "keys" / "robot.key", KEY)
    _write(tmp_path / "kc" / "certs" / "other-ca.crt", CA + b"other")
    _write(tmp_path / "kc" / "certs" / "robot.crt", CERT + b"robot")
    _write(tmp_path / "kc" / "tokens" / "robot", "file-token\n")
    return _write(tmp_path / "kc" / "config", KUBECONFIG.replace("/ABSOLUTE/robot.key", str(key)))


# -- kubeconfig files --------------------------------------------------------------------------


def test_current_context_with_embedded_data(kubeconfig: Path) -> None:
    config = KubeConfig.from_kubeconfig(kubeconfig)
    assert config.server == "https://127.0.0.1:6443"
    assert config.ca_data == CA
    assert config.client_cert_data == CERT
    assert config.client_key_data == KEY
    assert config.token is None and config.token_file is None
    assert config.insecure_skip_tls_verify is False


def test_named_context_with_files_relative_to_the_kubeconfig(kubeconfig: Path) -> None:
    config = KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    assert config.server == "https://other.example:443"
    assert config.ca_data == CA + b"other"
    assert config.client_cert_data == CERT + b"robot"
    assert config.client_key_data == KEY  # an absolute path is kept as it is
    assert config.token == "s3cr3t-token"
    assert config.token_file == kubeconfig.parent / "tokens" / "robot"


def test_data_wins_over_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config",
        KUBECONFIG.replace(
            f"    certificate-authority-data: {_b64(CA)}\n",
            f"    certificate-authority-data: {_b64(CA)}\n"
            "    certificate-authority: does-not-exist.crt\n",
        ),
    )
    assert KubeConfig.from_kubeconfig(path).ca_data == CA


def test_json_kubeconfig_and_insecure(tmp_path: Path) -> None:
    doc = {
        "clusters": [
            {"name": "c", "cluster": {"server": "https://k:6443", "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    config = KubeConfig.from_kubeconfig(_write(tmp_path / "config.json", json.dumps(doc)))
    assert config.insecure_skip_tls_verify is True
    assert config.token == "abc"
    assert config.ca_data is None


def test_context_without_user_is_anonymous(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config",
        "clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:8080\n"
        "contexts:\n- name: x\n  context:\n    cluster: c\n"
        "current-context: x\n",
    )
    config = KubeConfig.from_kubeconfig(path)
    assert config.server == "http://127.0.0.1:8080"
    assert config.client_cert_data is None and config.token is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("current-context: admin@local\n", ""), "current-context is not set"),
        (lambda t: t.replace("current-context: admin@local", "current-context: gone"), "gone"),
        (lambda t: t.replace("cluster: local\n", "cluster: nowhere\n"), "no cluster named"),
        (lambda t: t.replace("user: admin\n", "user: nobody\n"), "no user named 'nobody'"),
        (lambda t: t.replace("    server: https://127.0.0.1:6443\n", ""), "has no server"),
        (lambda t: t.replace(_b64(CA), "not*base64"), "not valid base64"),
        (lambda t: t.replace(f"    client-key-data: {_b64(KEY)}\n", ""), "needs a client key"),
        (
            lambda t: t.replace(
                f"    client-certificate-data: {_b64(CERT)}\n    client-key-data: {_b64(KEY)}\n",
                "    exec:\n      command: gke-gcloud-auth-plugin\n",
            ),
            "exec credentials are not supported",
        ),
        (lambda t: t.replace("server: https://127.0.0.1:6443", "server: 127.0.0.1"), "http(s)"),
        (lambda t: t + "  bad: [indent\n", "not a kubeconfig this client can read: line"),
        (lambda t: "just a string\n", "not a mapping"),
    ],
)
def test_missing_or_bad_pieces(tmp_path: Path, edit: Callable[[str], str], message: str) -> None:
    path = _write(tmp_path / "edited", edit(KUBECONFIG))
    with pytest.raises(KubeConfigError) as caught:
        KubeConfig.from_kubeconfig(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "s3cr3t-token" not in str(caught.value)


def test_missing_files(kubeconfig: Path, tmp_path: Path) -> None:
    (kubeconfig.parent / "tokens" / "robot").unlink()
    with pytest.raises(KubeConfigError, match=r"tokenFile .*robot does not exist"):
        KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    (kubeconfig.parent / "certs" / "robot.crt").unlink()
    with pytest.raises(KubeConfigError, match=r"cannot read client-certificate .*robot\.crt"):
        KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        KubeConfig.from_kubeconfig(tmp_path / "absent")


def test_errors_are_kube_errors_and_repr_hides_secrets(kubeconfig: Path) -> None:
    assert issubclass(KubeConfigError, KubeError)
    config = KubeConfig.from_kubeconfig(kubeconfig, context="robot@other")
    assert "s3cr3t-token" not in repr(config)
    assert "KEY" not in repr(config)
    assert "https://other.example:443" in repr(config)


# -- in-cluster --------------------------------------------------------------------------------


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "serviceaccount"
    _write(sa / "token", "pod-token\n")
    _write(sa / "ca.crt", CA)
    _write(sa / "namespace", "lazyimage-system")
    return sa


def test_in_cluster(service_account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = _in_cluster(env, service_account)
    assert config.server == "https://10.96.0.1:443"
    assert config.ca_data == CA
    assert config.token is None  # read from the file for each request: it rotates
    assert config.token_file == service_account / "token"


def test_in_cluster_ipv6_and_missing_ca(service_account: Path) -> None:
    (service_account / "ca.crt").unlink()
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    config = _in_cluster(env, service_account)
    assert config.server == "https://[fd00::1]:6443"
    assert config.ca_data is None


def test_not_in_cluster(service_account: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        _in_cluster({"KUBERNETES_SERVICE_PORT": "443"}, service_account)
    (service_account / "token").unlink()
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="cannot read service account token"):
        _in_cluster(env, service_account)


# -- the search order --------------------------------------------------------------------------


def test_load_order(tmp_path: Path, kubeconfig: Path, service_account: Path) -> None:
    home = tmp_path / "home"
    _write(
        home / ".kube" / "config",
        KUBECONFIG.replace("https://127.0.0.1:6443", "https://home.example"),
    )
    cluster_env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    listed = f"{tmp_path / 'absent'}:{kubeconfig}"

    explicit = _load(kubeconfig, {"KUBECONFIG": "/nowhere"}, service_account, home)
    assert explicit.server == "https://127.0.0.1:6443"
    env_first = _load(
        None, {"KUBECONFIG": f":{kubeconfig}:/x", **cluster_env}, service_account, home
    )
    assert env_first.server == "https://127.0.0.1:6443"
    with pytest.raises(KubeConfigError, match="absent"):
        _load(None, {"KUBECONFIG": listed}, service_account, home)  # only the first entry
    assert _load(None, cluster_env, service_account, home).server == "https://10.96.0.1:443"
    assert _load(None, {}, service_account, home).server == "https://home.example"


def test_load_finds_nothing(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="no Kubernetes configuration") as caught:
        _load(None, {}, tmp_path / "no-sa", tmp_path / "no-home")
    assert "no-home" in str(caught.value)


# -- the YAML subset ---------------------------------------------------------------------------


def test_yaml_subset() -> None:
    doc = load_yaml(
        "# a comment\n"
        "---\n"
        "a: 1\n"
        "b: 'it''s: here'\n"
        'c: "tab\\there"\n'
        "d: ~\n"
        "e: true\n"
        "f: [1, 2]\n"
        "g:\n"
        "- x\n"
        "- k: v\n"
        "  k2: v2\n"
        "-\n"
        "  - nested\n"
        "h: |-\n"
        "  line 1\n"
        "\n"
        "    line 2\n"
        "i: plain text # trailing comment\n"
        "j: http://host:80/path#frag\n"
    )
    assert doc == {
        "a": 1,
        "b": "it's: here",
        "c": "tab\there",
        "d": None,
        "e": True,
        "f": [1, 2],
        "g": ["x", {"k": "v", "k2": "v2"}, ["nested"]],
        "h": "line 1\n\n  line 2",
        "i": "plain text",
        "j": "http://host:80/path#frag",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &anchor 1\n", "line 1: unsupported YAML feature '&'"),
        ("a: *alias\n", "line 1: unsupported YAML feature '*'"),
        ("a: b\n  continued\n", "line 2: multi-line plain scalars"),
        ("a: 1\na: 2\n", "line 2: duplicate key 'a'"),
        ("a:\n\tb: 1\n", "line 2: tabs"),
        ("a: [x, y]\n", "line 1: flow collections must be JSON"),
        ("a: >\n  folded\n", "line 1: unsupported YAML feature '>'"),
        ("a: 1\n- b\n", "line 2: a sequence item where a mapping key was expected"),
        ('a: "open\n', "line 1: unterminated"),
    ],
)
def test_yaml_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(YamlError) as caught:
        load_yaml(text)
    assert message in str(caught.value)


# -- TLS and the token as sent -----------------------------------------------------------------


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


def test_ssl_context_with_client_cert_and_ca() -> None:
    cert, key = _self_signed()
    context = ssl_context(
        KubeConfig("https://k", ca_data=cert, client_cert_data=cert, client_key_data=key)
    )
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509"] == 1  # only the cluster CA, not the system's
    insecure = ssl_context(KubeConfig("https://k", insecure_skip_tls_verify=True))
    assert insecure.verify_mode == ssl.CERT_NONE


def test_ssl_context_bad_material() -> None:
    cert, _ = _self_signed()
    _, other_key = _self_signed()
    with pytest.raises(KubeConfigError, match="invalid client certificate or key"):
        ssl_context(KubeConfig("https://k", client_cert_data=cert, client_key_data=other_key))
    with pytest.raises(KubeConfigError, match="invalid certificate authority data"):
        ssl_context(KubeConfig("https://k", ca_data=CA))


def test_token_file_is_read_for_each_request(tmp_path: Path) -> None:
    token_file = _write(tmp_path / "token", "first-token\n")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        status = {"kind": "Status", "code": 401, "reason": "Unauthorized", "message": "nope"}
        return httpx.Response(401 if len(seen) == 3 else 200, json=status)

    path = ResourcePath("", "v1", "namespaces")

    async def main() -> None:
        config = KubeConfig("https://k", token="ignored", token_file=token_file)
        with anyio.fail_after(10):
            await exchange(config)

    async def exchange(config: KubeConfig) -> None:
        async with KubeClient(config, transport=httpx.MockTransport(handler)) as client:
            await client.get(path, "a")
            token_file.write_text("second-token\n")
            await client.get(path, "a")
            with pytest.raises(KubeError) as caught:
                await client.get(path, "a")
        assert caught.value.status == 401
        assert "second-token" not in str(caught.value)
        assert str(caught.value) == "GET /api/v1/namespaces/a: 401 Unauthorized: nope"

    anyio.run(main, backend="trio")
    assert seen == ["Bearer first-token", "Bearer second-token", "Bearer second-token"]
