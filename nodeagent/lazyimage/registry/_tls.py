"""An ssl.SSLContext for a registry host's own TLS settings (hosts.toml ``ca``, ``client``,
``skip_verify``), built on the same trust as httpx's default so that a private CA adds to it."""

from __future__ import annotations

import ssl

import httpx

from lazyimage.errors import ConfigError
from lazyimage.registry._hostsfile import TLSSettings

__all__ = ["ssl_context"]


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


def ssl_context(settings: TLSSettings, where: str) -> ssl.SSLContext:
    """The context for ``settings``. Errors start with ``where`` and the key: ``where`` is
    the file and table they came from (``/etc/.../hosts.toml: host."https://mirror".``).

    Python's ssl offers one client certificate per context, so of several ``client``
    entries the first is used.
    """
    context = httpx.create_ssl_context()
    for ca in settings.ca_files:
        try:
            context.load_verify_locations(cafile=ca)
        except OSError as exc:  # ssl.SSLError is one: a file with no certificate in it
            raise ConfigError(f"{where}ca: cannot load {ca}: {_reason(exc)}") from None
    if settings.client_pairs:
        cert, key = settings.client_pairs[0]
        try:
            context.load_cert_chain(cert, key)
        except OSError as exc:
            files = f"{cert} and {key}" if key is not None else str(cert)
            raise ConfigError(f"{where}client: cannot load {files}: {_reason(exc)}") from None
    if settings.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
