"""KubeConfig: where the apiserver is and how to authenticate, from a kubeconfig file or from
the service account a pod runs as.

Everything is read when the config is loaded (certificates, keys, CA), except a token file:
projected service account tokens rotate, so the client reads ``token_file`` again for each
request.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyimage.kube._errors import KubeConfigError
from lazyimage.kube._yaml import YamlError, load_yaml

__all__ = ["SERVICE_ACCOUNT_DIR", "KubeConfig"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubeConfig:
    """How to reach one apiserver. ``*_data`` are PEM bytes. A ``token_file`` wins over a
    ``token`` (as in client-go). Secrets stay out of ``repr``."""

    server: str
    ca_data: bytes | None = field(default=None, repr=False)
    client_cert_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    insecure_skip_tls_verify: bool = False

    def __post_init__(self) -> None:
        if not self.server.startswith(("https://", "http://")):
            raise KubeConfigError(f"server {self.server!r} is not an http(s) URL")
        if (self.client_cert_data is None) != (self.client_key_data is None):
            raise KubeConfigError("a client certificate needs its key, and a key its certificate")

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        """The config of a pod: its service account token and CA, and the kubernetes service."""
        return _in_cluster(os.environ, SERVICE_ACCOUNT_DIR)

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> KubeConfig:
        """The config of ``context`` (default: the file's current-context) in a kubeconfig.

        ``*-data`` fields are base64 and win over the matching file fields; file paths are
        relative to the kubeconfig's directory. Exec plugins, auth providers and basic auth
        are not supported.
        """
        return _from_kubeconfig(path, context)

    @classmethod
    def load(cls, kubeconfig: Path | None = None) -> KubeConfig:
        """The first that applies: ``kubeconfig``, the first file in $KUBECONFIG, the pod's
        service account, ``~/.kube/config``."""
        return _load(kubeconfig, os.environ, SERVICE_ACCOUNT_DIR, _home())


def _home() -> Path | None:
    try:
        return Path.home()
    except RuntimeError:
        return None


def _in_cluster_available(environ: Mapping[str, str], sa_dir: Path) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (sa_dir / "token").is_file()


def _in_cluster(environ: Mapping[str, str], sa_dir: Path) -> KubeConfig:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
            "must both be set"
        )
    token_file = sa_dir / "token"
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise KubeConfigError(f"cannot read service account token {token_file}: {exc}") from exc
    if not token:
        raise KubeConfigError(f"service account token {token_file} is empty")
    # client-go goes on with the system CAs when ca.crt is missing; so do we.
    ca_file = sa_dir / "ca.crt"
    ca_data = ca_file.read_bytes() if ca_file.is_file() else None
    if ":" in host:
        host = f"[{host}]"
    return KubeConfig(server=f"https://{host}:{port}", ca_data=ca_data, token_file=token_file)


def _load(
    kubeconfig: Path | None, environ: Mapping[str, str], sa_dir: Path, home: Path | None
) -> KubeConfig:
    if kubeconfig is not None:
        return _from_kubeconfig(kubeconfig, None)
    first = next((p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p), None)
    if first is not None:
        return _from_kubeconfig(Path(first), None)
    if _in_cluster_available(environ, sa_dir):
        return _in_cluster(environ, sa_dir)
    default = home / ".kube" / "config" if home is not None else None
    if default is not None and default.is_file():
        return _from_kubeconfig(default, None)
    raise KubeConfigError(
        "no Kubernetes configuration: no kubeconfig was given, $KUBECONFIG is not set, "
        f"there is no service account token in {sa_dir} (or KUBERNETES_SERVICE_HOST is "
        f"unset), and {default or '~/.kube/config'} does not exist"
    )


class _Kubeconfig:
    """One parsed kubeconfig file; its errors name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text()
        except OSError as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        try:
            doc = load_yaml(text)
        except YamlError as exc:
            raise self.error(f"not a kubeconfig this client can read: {exc}") from exc
        if not isinstance(doc, dict):
            raise self.error("not a mapping")
        self.doc: dict[str, Any] = doc

    def error(self, message: str) -> KubeConfigError:
        return KubeConfigError(f"kubeconfig {self.path}: {message}")

    def named(self, section: str, name: str) -> dict[str, Any]:
        """The body of the entry ``name`` of ``clusters``, ``users`` or ``contexts``."""
        entries = self.doc.get(section) or []
        if not isinstance(entries, list):
            raise self.error(f"{section} is not a list")
        key = section[:-1]
        for entry in entries:
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(key) or {}
                if not isinstance(body, dict):
                    raise self.error(f"{key} {name!r} is not a mapping")
                return body
        raise self.error(f"no {key} named {name!r}")

    def string(self, body: dict[str, Any], key: str, where: str) -> str | None:
        value = body.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(f"{where}: {key} is not a string")
        return value

    def path_of(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def data_or_file(
        self, body: dict[str, Any], data_key: str, file_key: str, where: str
    ) -> bytes | None:
        """``body[data_key]`` decoded from base64, else the file ``body[file_key]`` names."""
        data = self.string(body, data_key, where)
        if data is not None:
            try:
                return base64.b64decode("".join(data.split()), validate=True)
            except (binascii.Error, ValueError):
                raise self.error(f"{where}: {data_key} is not valid base64") from None
        name = self.string(body, file_key, where)
        if name is None:
            return None
        file = self.path_of(name)
        try:
            return file.read_bytes()
        except OSError as exc:
            raise self.error(f"{where}: cannot read {file_key} {file}: {exc}") from exc


def _from_kubeconfig(path: Path, context: str | None) -> KubeConfig:
    kc = _Kubeconfig(path)
    context_name = context or kc.string(kc.doc, "current-context", "top level")
    if context_name is None:
        raise kc.error("no context was given and current-context is not set")
    ctx = kc.named("contexts", context_name)
    where = f"context {context_name!r}"
    cluster_name = kc.string(ctx, "cluster", where)
    if cluster_name is None:
        raise kc.error(f"{where} names no cluster")
    cluster = kc.named("clusters", cluster_name)
    user_name = kc.string(ctx, "user", where)
    user = kc.named("users", user_name) if user_name is not None else {}

    where = f"cluster {cluster_name!r}"
    server = kc.string(cluster, "server", where)
    if server is None:
        raise kc.error(f"{where} has no server")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise kc.error(f"{where}: insecure-skip-tls-verify is not a boolean")
    ca_data = kc.data_or_file(cluster, "certificate-authority-data", "certificate-authority", where)

    where = f"user {user_name!r}"
    cert = kc.data_or_file(user, "client-certificate-data", "client-certificate", where)
    key = kc.data_or_file(user, "client-key-data", "client-key", where)
    token = kc.string(user, "token", where)
    token_name = kc.string(user, "tokenFile", where)
    token_file = kc.path_of(token_name) if token_name is not None else None
    if token_file is not None and not token_file.is_file():
        raise kc.error(f"{where}: tokenFile {token_file} does not exist")
    if cert is None and token is None and token_file is None:
        unsupported = [k for k in ("exec", "auth-provider", "username") if user.get(k)]
        if unsupported:
            raise kc.error(f"{where}: {unsupported[0]} credentials are not supported")
    if (cert is None) != (key is None):
        raise kc.error(f"{where}: a client certificate needs a client key, and a key a cert")
    try:
        return KubeConfig(
            server=server,
            ca_data=ca_data,
            client_cert_data=cert,
            client_key_data=key,
            token=token,
            token_file=token_file,
            insecure_skip_tls_verify=insecure,
        )
    except KubeConfigError as exc:
        raise kc.error(str(exc)) from None
