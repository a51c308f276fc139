"""OCI distribution client: references, credentials, retries, manifests and blob ranges.

One RegistryClient (an async context manager) holds one connection pool, one token cache and
the redirect targets of blobs; share it between tasks. Its CredentialStore keeps the node's
credentials host-wide and every other source's scoped to the repositories it was granted for.
``RegistryClient.read_bound`` (a ``CallBound``) says what one range read may cost: attempts,
and time past its deadline.
Every failure is a ``lazyimage.errors.RegistryError`` naming the registry, repository and what
was asked, or a ``VerificationError`` for bytes that do not match their digest.

``RegistryHosts`` reads containerd's per-registry configuration (``/etc/containerd/certs.d``:
``hosts.toml`` mirrors, servers, CAs, client certificates) for the client to follow.
"""

from lazyimage.registry._auth import Challenge, parse_www_authenticate
from lazyimage.registry._client import (
    FetchedManifest,
    RegistryClient,
    ResolvedImage,
)
from lazyimage.registry._credentials import CredentialStore
from lazyimage.registry._hostsdir import RegistryHosts
from lazyimage.registry._http import ContentRange, parse_content_range
from lazyimage.registry._keychain import Credentials, DockerConfigFile, Keychain
from lazyimage.registry._reference import Reference
from lazyimage.registry._runner import CallBound
from lazyimage.retry import RetryPolicy

__all__ = [
    "CallBound",
    "Challenge",
    "ContentRange",
    "CredentialStore",
    "Credentials",
    "DockerConfigFile",
    "FetchedManifest",
    "Keychain",
    "Reference",
    "RegistryClient",
    "RegistryHosts",
    "ResolvedImage",
    "RetryPolicy",
    "parse_content_range",
    "parse_www_authenticate",
]
