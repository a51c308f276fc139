"""TLS for registry hosts: an ssl.SSLContext for a host's own settings (hosts.toml ``ca``,
``client``, ``skip_verify``), built on the same trust as httpx's default so that a private CA
adds to it; and what a failed handshake means."""

from __future__ import annotations

import ssl

import httpx

from lazyimage.errors import ConfigError
from lazyimage.registry._hostsfile import TLSSettings

__all__ = ["certificate_refusal", "ssl_context", "tls_handshake_failure"]


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


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc``, if any.

    httpx raises ConnectError from httpcore's, which comes from the SSLError itself (asyncio)
    or from trio's BrokenResourceError around it; an alert received while reading may come
    as the SSLError itself.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; the bound guards against a cycle
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# The alerts a server sends when it wants a client certificate it did not get (or trust).
_CLIENT_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
)


def certificate_refusal(host: str, exc: BaseException) -> str | None:
    """Why the TLS handshake with ``host`` failed on a certificate, either way, or None if it
    did not."""
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = cause.verify_message or cause.reason or str(cause)
        return (
            f"the TLS certificate of {host} is not trusted ({reason}); name its CA with `ca` in "
            f"the registry's hosts.toml (--registry-config)"
        )
    reason = (cause.reason or "") if cause is not None else ""
    if any(alert in reason for alert in _CLIENT_CERTIFICATE_ALERTS):
        return (
            f"{host} refused the TLS handshake for want of a client certificate it trusts "
            f"({reason}); give one with `client` in the registry's hosts.toml (--registry-config)"
        )
    return None


def tls_handshake_failure(exc: BaseException) -> bool:
    """Whether an ssl.SSLError, other than an untrusted certificate, lies behind ``exc``."""
    cause = _ssl_cause(exc)
    return cause is not None and not isinstance(cause, ssl.SSLCertVerificationError)
