"""The exceptions lazyimage raises.

    LazyImageError
    ├── FormatError              a blob, tar stream or TOC that is not valid eStargz
    ├── VerificationError        bytes whose digest is not the one promised
    ├── InvalidReferenceError    an image reference that cannot be parsed
    ├── RegistryError            a registry request that failed for good
    │   ├── NotFoundError          404: no such repository, tag, manifest or blob
    │   ├── AuthError              401 or 403 after every credential was tried
    │   ├── RangeNotSupportedError a ranged GET answered without 206 / Content-Range
    │   ├── PlainHTTPError         https asked of a registry that speaks plain http
    │   ├── TLSError               a certificate refused in the TLS handshake, either way
    │   └── UnavailableError       5xx, 429 or connection errors past the retry bound
    ├── StorageError             a local file could not be written or read (disk full, denied)
    ├── ConfigError              a configuration file that cannot be used (a registry hosts.toml)
    └── ConversionError          converting an image failed; names the image and layer

No class here knows about errno values or gRPC status codes; the layers that speak those
protocols translate.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "ConversionError",
    "FormatError",
    "InvalidReferenceError",
    "LazyImageError",
    "NotFoundError",
    "PlainHTTPError",
    "RangeNotSupportedError",
    "RegistryError",
    "StorageError",
    "TLSError",
    "UnavailableError",
    "VerificationError",
]


class LazyImageError(Exception):
    """Base of every error lazyimage raises on purpose."""


class FormatError(LazyImageError):
    """The input is not valid eStargz (footer, TOC, tar stream or gzip member)."""


class VerificationError(LazyImageError):
    """Bytes did not match the digest they were promised to have."""


class InvalidReferenceError(LazyImageError, ValueError):
    """An image reference could not be parsed."""


class RegistryError(LazyImageError):
    """A registry request failed. Carries the registry, repository and what was asked."""

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repository: str = "",
        what: str = "",
        status: int | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.what = what
        self.status = status
        where = "/".join(part for part in (registry, repository) if part)
        context = f"{what} from {where}" if what and where else (what or where)
        super().__init__(f"{context}: {message}" if context else message)


class NotFoundError(RegistryError):
    """The registry answered 404."""


class AuthError(RegistryError):
    """The registry refused our credentials (401 or 403)."""


class RangeNotSupportedError(RegistryError):
    """A range request was not answered with 206 and a matching Content-Range."""


class PlainHTTPError(RegistryError):
    """The registry answered a TLS handshake in plain http: it needs --insecure-registry.

    Retrying cannot help, so the first such failure ends the operation."""


class TLSError(RegistryError):
    """The TLS handshake failed on a certificate: the registry's was not trusted, or it
    refused ours (or asked for one we do not have).

    Retrying cannot help, so the first such failure ends the attempt on that host."""


class UnavailableError(RegistryError):
    """The registry kept failing (5xx, 429, connection errors) past the retry bound."""


class StorageError(LazyImageError):
    """A local file or directory could not be written or read: a full disk, a read-only
    filesystem, no permission. The message names the path; the OSError is the cause."""


class ConfigError(LazyImageError, ValueError):
    """A configuration file that cannot be used: not valid TOML, a key of the wrong type, a
    certificate it names that cannot be read. The message names the file and the key."""


class ConversionError(LazyImageError):
    """Converting an image failed. The message names the image and, if known, the layer."""

    def __init__(self, message: str, *, image: str = "", layer: str = "") -> None:
        self.image = image
        self.layer = layer
        parts = [p for p in (f"image {image}" if image else "", f"layer {layer}" if layer else "")]
        prefix = ", ".join(p for p in parts if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)
