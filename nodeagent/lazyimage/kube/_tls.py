"""The TLS context for a KubeConfig: the cluster CA (or the system CAs) and a client cert."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from lazyimage.kube._errors import KubeConfigError

if TYPE_CHECKING:
    from lazyimage.kube._config import KubeConfig

__all__ = ["ssl_context"]


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    """Verify the API server against the cluster CA alone when there is one (as client-go
    does), else against the system CAs; present the client certificate if there is one."""
    try:
        context = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None and config.verify else None
        )
    except (ssl.SSLError, OSError) as exc:
        raise KubeConfigError(f"invalid certificate authority {config.ca_file}: {exc}") from None
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert_file is not None and config.client_key_file is not None:
        try:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise KubeConfigError(f"invalid client certificate or key: {exc}") from None
    return context
