"""KubeConfig: where the API server is and how to authenticate, as the ``kubernetes`` package
loads it from kubeconfig files or from the service account a pod runs as.

Loading blocks (files, exec credential plugins): from async code use ``load_async``, which
runs it in a worker thread. The TLS material is fixed once loaded; the Authorization header
is kept current by ``credentials`` (lazyimage.kube._auth).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from lazyimage.kube._auth import Credentials
from lazyimage.kube._errors import KubeConfigError
from lazyimage.kube._source import (
    SERVICE_ACCOUNT_DIR,
    ConfigSource,
    InCluster,
    KubeconfigDict,
    KubeconfigFiles,
    find_source,
)

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = ["KubeConfig"]


class KubeConfig:
    """How to reach one API server: its URL, TLS material as files (the kubernetes package
    writes embedded ``*-data`` to private temporary files), and ``credentials``."""

    def __init__(self, configuration: Configuration, source: ConfigSource | None = None) -> None:
        server = str(configuration.host or "")
        if not server.startswith(("https://", "http://")):
            raise KubeConfigError(
                f"{source or 'configuration'}: server {server!r} is not an http(s) URL"
            )
        self.server = server
        self.source = source
        self.verify = bool(configuration.verify_ssl)
        self.ca_file = _path(configuration.ssl_ca_cert)
        self.client_cert_file = _path(configuration.cert_file)
        self.client_key_file = _path(configuration.key_file)
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise KubeConfigError(
                f"{source or 'configuration'}: a client certificate needs its key, "
                "and a key its certificate"
            )
        self.tls_server_name: str | None = configuration.tls_server_name or None
        self.credentials = Credentials(configuration, source)

    def __repr__(self) -> str:
        return f"KubeConfig(server={self.server!r}, source={self.source!r})"

    @classmethod
    def load(cls, kubeconfig: Path | None = None) -> KubeConfig:
        """The first that applies: ``kubeconfig``; the files of ``$KUBECONFIG``, merged as
        kubectl merges them; the pod's service account; ``~/.kube/config``. Blocks."""
        return cls.from_source(find_source(kubeconfig, os.environ, SERVICE_ACCOUNT_DIR, _home()))

    @classmethod
    async def load_async(cls, kubeconfig: Path | None = None) -> KubeConfig:
        """``load`` in a worker thread, so that an exec plugin does not stall the event loop."""
        return await anyio.to_thread.run_sync(cls.load, kubeconfig, abandon_on_cancel=True)

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> KubeConfig:
        """The config of ``context`` (default: the current-context) in one kubeconfig."""
        return cls.from_source(KubeconfigFiles((path,), context))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], context: str | None = None) -> KubeConfig:
        """The config of ``context`` in a kubeconfig already parsed; file paths in it are
        relative to the working directory."""
        return cls.from_source(KubeconfigDict(doc, context))

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        """The config of a pod: its service account token and CA, and the kubernetes
        Service. The token file is read again every minute: kubelet rotates it."""
        return cls.from_source(InCluster(os.environ))

    @classmethod
    def from_source(cls, source: ConfigSource) -> KubeConfig:
        return cls(source.load(), source)


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def _home() -> Path | None:
    try:
        return Path.home()
    except RuntimeError:
        return None
