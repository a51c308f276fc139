"""The TLS context for a KubeConfig: the cluster CA (or the system CAs) and a client cert."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from lazyimage.kube._config import KubeConfig
from lazyimage.kube._errors import KubeConfigError

__all__ = ["ssl_context"]


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    """Verify the apiserver against ``ca_data`` alone when given (as client-go does), else
    against the system CAs; present the client certificate if there is one."""
    try:
        if config.ca_data is not None and not config.insecure_skip_tls_verify:
            context = ssl.create_default_context(cadata=config.ca_data.decode("ascii"))
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise KubeConfigError(f"invalid certificate authority data: {exc}") from exc
    if config.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert_data is not None and config.client_key_data is not None:
        _load_client_cert(context, config.client_cert_data, config.client_key_data)
    return context


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads a certificate chain only from files: write both to a private temporary
    # directory, load them, and remove them at once.
    with tempfile.TemporaryDirectory(prefix="lazyimage-kube-") as tmp:
        cert_file = _write_private(Path(tmp) / "client.crt", cert)
        key_file = _write_private(Path(tmp) / "client.key", key)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise KubeConfigError(f"invalid client certificate or key: {exc}") from exc


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path
