"""RegistryClient: the OCI distribution API over one httpx.AsyncClient.

A façade over single-purpose pieces that share one ``Connection`` (connection pool, auth
flow, credentials, router): ``Manifests``, ``Blobs`` (downloads, sizes, existence),
``Ranges`` (range reads and their redirect cache) and ``Uploads``, each running its
operations through one ``Runner`` (hosts, mirrors, retries). Pull operations try the
registry's mirrors first, once each, then its server (the registry itself unless its
hosts.toml names another); pushes go to the first host that may push. Only anyio and httpx
are used, so the client runs under asyncio and trio alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from lazyimage import __version__
from lazyimage.oci import Platform
from lazyimage.registry._blobs import Blobs
from lazyimage.registry._connection import Connection
from lazyimage.registry._credentials import CredentialStore
from lazyimage.registry._hostsdir import RegistryHosts
from lazyimage.registry._keychain import Keychain
from lazyimage.registry._manifests import (
    DEFAULT_PLATFORM,
    FetchedManifest,
    Manifests,
    ResolvedImage,
)
from lazyimage.registry._ranges import Ranges
from lazyimage.registry._reference import Reference
from lazyimage.registry._runner import CallBound, Runner
from lazyimage.registry._uploads import Uploads
from lazyimage.retry import RetryPolicy

__all__ = ["FetchedManifest", "RegistryClient", "ResolvedImage"]


class RegistryClient:
    """An OCI distribution client. Use as ``async with RegistryClient(...) as client``.

    ``insecure_registries`` lists ``host:port`` values spoken to over plain http.
    ``mirrors`` maps a registry name (``docker.io``, ``host:port``) to mirror hosts or URLs,
    tried in order before the registry for pulls. ``hosts`` reads each registry's hosts from
    containerd's configuration directory (``/etc/containerd/certs.d``): mirrors with their
    capabilities, the server, CAs, client certificates, headers; they come after ``mirrors``.
    ``timeout`` bounds each connect, read and write; ``retry`` bounds the attempts of an
    operation in count and time. ``transport`` replaces the network (``httpx.MockTransport``
    in tests; the hosts' TLS settings then have no effect).

    Credentials come from ``credentials`` (a CredentialStore: the node's credentials plus
    sources granted per repository), or from ``keychain`` alone. When the registry refuses
    every candidate of an operation, their sources are read again (``refresh``) and, if they
    changed, the operation tries once more.
    """

    def __init__(
        self,
        *,
        keychain: Keychain | None = None,
        credentials: CredentialStore | None = None,
        insecure_registries: Sequence[str] = (),
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        mirrors: Mapping[str, Sequence[str]] | None = None,
        hosts: RegistryHosts | None = None,
        max_connections: int = 64,
        user_agent: str = f"lazyimage/{__version__}",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if credentials is not None and keychain is not None:
            raise ValueError("give keychain or credentials, not both")
        self.credentials = credentials if credentials is not None else CredentialStore(keychain)
        self._connection = Connection(
            credentials=self.credentials,
            insecure_registries=insecure_registries,
            timeout=timeout,
            mirrors=mirrors or {},
            hosts=hosts,
            max_connections=max_connections,
            user_agent=user_agent,
            transport=transport,
        )
        self._runner = Runner(self._connection, retry if retry is not None else RetryPolicy())
        self._manifests = Manifests(self._runner)
        self._blobs = Blobs(self._runner)
        self._ranges = Ranges(self._runner)
        self._uploads = Uploads(self._runner, self._blobs)

    @property
    def retry(self) -> RetryPolicy:
        """The policy every operation runs under."""
        return self._runner.policy

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._runner.policy = policy

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._connection.aclose()

    # -- manifests ---------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest or index ``ref`` names (by digest if it has one, else by tag)."""
        return await self._manifests.get(ref)

    async def resolve_image(
        self, ref: Reference, platform: Platform = DEFAULT_PLATFORM
    ) -> ResolvedImage:
        """The image manifest of ``ref`` for ``platform``, through its index if it has one."""
        return await self._manifests.resolve(ref, platform)

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Upload a manifest or index; return its digest.

        A reference with a digest pushes by digest (untagged; the data must have that digest,
        and a tag is ignored, as in ``ref.with_digest(d)`` for an index's children); otherwise
        it pushes to ``ref.tag``.
        """
        return await self._uploads.push_manifest(ref, data, media_type)

    # -- blobs -------------------------------------------------------------------------------

    async def get_blob(self, ref: Reference, digest: str) -> bytes:
        """A whole blob in memory, verified against ``digest``."""
        return await self._blobs.get(ref, digest)

    async def download_blob(
        self,
        ref: Reference,
        digest: str,
        path: Path,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream a blob to ``path`` through a temporary file; verify, then rename.

        ``progress`` is called with the number of bytes received so far (it goes down if a
        retry must start over). A retry resumes with a Range request when the server allows.
        Returns the size.
        """
        return await self._blobs.download(ref, digest, path, progress)

    async def read_range(
        self,
        ref: Reference,
        digest: str,
        offset: int,
        length: int,
        *,
        stall_timeout: float | None = None,
        on_retry: Callable[[str], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        on_attempt: Callable[[], None] | None = None,
        deadline: float | None = None,
    ) -> memoryview:
        """Exactly the bytes ``[offset, offset + length)`` of a blob, as a view of the one
        buffer they were received into.

        The answer must be a 206 whose Content-Range is that range, else
        RangeNotSupportedError. A short body is retried. Not verified: the caller checks the
        chunk digests it knows.

        ``stall_timeout`` abandons an attempt when no byte arrives (or no connection is made)
        for that long, and retries it under the policy, so a stalled server costs about that
        much rather than the client's whole timeout. ``on_retry`` is called with the cause
        before each retry, ``on_attempt`` as each attempt starts, ``on_progress`` when an
        answer's headers and each piece of its body arrive.

        ``deadline`` is an absolute time on anyio's clock (``anyio.current_time()``): no
        attempt starts after it, the attempt in flight is cancelled at it, and the call then
        raises UnavailableError (as when its retries are spent) naming the last failure and
        the number of attempts. ``read_bound`` says what a call may cost.
        """
        return await self._ranges.read(
            ref,
            digest,
            offset,
            length,
            stall_timeout=stall_timeout,
            on_retry=on_retry,
            on_progress=on_progress,
            on_attempt=on_attempt,
            deadline=deadline,
        )

    @property
    def read_bound(self) -> CallBound:
        """What one ``read_range`` call may cost under the current policy: how many attempts
        (and how redirects, mirrors and tokens count), and how long past its deadline it may
        return. See CallBound."""
        return self._runner.bound

    async def blob_size(self, ref: Reference, digest: str) -> int:
        """A blob's size: HEAD, or ``GET Range: bytes=0-0`` where HEAD gives no length."""
        return await self._blobs.size(ref, digest)

    async def has_blob(self, ref: Reference, digest: str) -> bool:
        """Whether the registry (or a mirror) serves the blob."""
        return await self._blobs.exists(ref, digest, for_push=False)

    async def push_blob(self, ref: Reference, source: bytes | Path, digest: str, size: int) -> None:
        """Upload a blob unless the registry has it: one POST, then one PUT with the bytes."""
        await self._uploads.push_blob(ref, source, digest, size)
