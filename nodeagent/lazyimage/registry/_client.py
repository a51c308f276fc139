"""RegistryClient: the OCI distribution API over one httpx.AsyncClient.

Each public method is one operation. An operation runs attempts under a RetryPolicy; an
attempt sends requests through ``_open`` (auth, manual redirects) and turns statuses into
errors with ``_raise_for_status``. Pull operations try the registry's mirrors first, once
each, then its server (the registry itself unless its hosts.toml names another); pushes go to
the first host that may push. Only anyio and httpx are used, so the client runs under asyncio
and trio alike.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import anyio
import httpx

from lazyimage import __version__
from lazyimage.errors import (
    AuthError,
    FormatError,
    InvalidReferenceError,
    NotFoundError,
    PlainHTTPError,
    RangeNotSupportedError,
    RegistryError,
    TLSError,
    UnavailableError,
    VerificationError,
)
from lazyimage.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    is_digest,
    select_platform,
    sha256_digest,
)
from lazyimage.registry._auth import RegistryAuth, ReplayRequired
from lazyimage.registry._credentials import CredentialStore
from lazyimage.registry._hostsdir import RegistryHosts
from lazyimage.registry._hostsfile import Capability
from lazyimage.registry._http import error_detail, media_type_of, parse_content_range
from lazyimage.registry._keychain import Keychain
from lazyimage.registry._reference import Reference
from lazyimage.registry._retry import RetryPolicy, RetryState, parse_retry_after
from lazyimage.registry._routes import Endpoint, Router
from lazyimage.registry._sinks import FileSink, MemorySink, Sink
from lazyimage.registry._tls import certificate_refusal, tls_handshake_failure

__all__ = ["FetchedManifest", "RegistryClient", "ResolvedImage"]

log = logging.getLogger("lazyimage.registry")

T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))
# The OCI spec lets registries refuse manifests over 4 MiB; refuse to buffer more.
MAX_MANIFEST_SIZE = 4 << 20
_MAX_ERROR_BODY = 64 << 10
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 20
_LOCATION_CACHE_SIZE = 4096
DEFAULT_PLATFORM = Platform("linux", "amd64")
_IDENTITY = {"Accept-Encoding": "identity"}
_PLAIN_HTTP_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index exactly as the registry sent it, with its sha256 digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class ResolvedImage:
    """An image manifest for one platform, and the index it was picked from, if any."""

    manifest: Manifest
    manifest_data: bytes
    manifest_digest: str
    index: Index | None = None
    index_data: bytes | None = None
    index_digest: str | None = None


@dataclass(frozen=True)
class _Op:
    """What an operation asks for, to name it in errors."""

    registry: str
    repository: str
    what: str

    def error(
        self, cls: type[RegistryError], message: str, status: int | None = None
    ) -> RegistryError:
        return cls(
            message,
            registry=self.registry,
            repository=self.repository,
            what=self.what,
            status=status,
        )

    def mismatch(self, message: str) -> VerificationError:
        return VerificationError(f"{self.what} from {self.registry}/{self.repository}: {message}")


class _Fatal(Exception):
    """A failure below the operation (a redirect loop); the operation names it."""


class _Retryable(Exception):
    """A failure worth another attempt: 5xx, 429, a short body."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


def _blob_op(ref: Reference, digest: str, what: str) -> _Op:
    # The digest becomes part of a URL path: refuse anything but a well-formed digest.
    if not is_digest(digest):
        raise InvalidReferenceError(f"invalid blob digest {digest!r}")
    return _Op(ref.registry, ref.repository, what)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent (no content decoding), whether streamed or already in memory."""
    try:
        # A transport that answers from memory (httpx.MockTransport) has read it already.
        return _single(response.content)
    except httpx.ResponseNotRead:
        return response.aiter_raw()


async def _read_limited(
    response: httpx.Response, limit: int, progress: Callable[[], None] | None = None
) -> bytes | None:
    """The raw body, or None if it is longer than ``limit``. ``progress`` is called on
    each piece received."""
    buffer = bytearray()
    async for chunk in _raw_chunks(response):
        if progress is not None:
            progress()
        buffer += chunk
        if len(buffer) > limit:
            return None
    return bytes(buffer)


async def _drain(
    response: httpx.Response, sink: Sink, progress: Callable[[int], None] | None
) -> None:
    """Copy the body to ``sink`` in large writes. Bytes received before a failure are kept,
    so that the next attempt can resume after them."""
    pending = bytearray()

    async def flush() -> None:
        await sink.write(bytes(pending))
        pending.clear()
        if progress is not None:
            progress(sink.size)

    try:
        async for chunk in _raw_chunks(response):
            pending += chunk
            if len(pending) >= _CHUNK:
                await flush()
    finally:
        if pending:
            with anyio.CancelScope(shield=True):
                await flush()


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
        self.retry = retry if retry is not None else RetryPolicy()
        self._auth = RegistryAuth(self.credentials)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # Digests are over the bytes as stored: never let a server re-encode them.
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._transport = transport
        self._http = self._new_http(httpx.Timeout(timeout), True)
        self._router = Router(
            insecure=insecure_registries,
            mirrors=mirrors or {},
            hosts=hosts,
            timeout=self._http.timeout,
            new_client=self._new_http if transport is None else None,
        )
        # Where a blob was redirected to, so range reads go straight to object storage.
        self._locations: OrderedDict[tuple[str, str, str], httpx.URL] = OrderedDict()

    def _new_http(self, timeout: httpx.Timeout, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=timeout,
            limits=self._limits,
            headers=self._headers,
            follow_redirects=False,
            verify=verify,
            transport=self._transport,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._router.aclose()

    # -- manifests ---------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest or index ``ref`` names (by digest if it has one, else by tag)."""
        op = _Op(ref.registry, ref.repository, f"manifest {ref.identifier}")
        path = f"/v2/{ref.repository}/manifests/{ref.identifier}"

        async def attempt(endpoint: Endpoint) -> tuple[bytes, httpx.Headers]:
            headers = {"Accept": MANIFEST_ACCEPT}
            async with self._open(endpoint, "GET", self._url(endpoint, path), headers) as resp:
                if resp.status_code != 200:
                    await self._raise_for_status(op, endpoint, resp)
                data = await _read_limited(resp, MAX_MANIFEST_SIZE)
                if data is None:
                    raise op.error(RegistryError, f"larger than {MAX_MANIFEST_SIZE} bytes")
                return data, resp.headers

        # A tag is resolved only by hosts trusted to; content named by digest is checked.
        need = Capability.PULL if ref.digest else Capability.RESOLVE
        data, headers = await self._pull(ref, op, attempt, bounded=True, need=need)
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise op.mismatch(f"content has digest {digest}, expected {ref.digest}")
        claimed = headers.get("docker-content-digest", "")
        if not ref.digest and claimed.startswith("sha256:") and claimed != digest:
            raise op.mismatch(f"content has digest {digest}, registry says {claimed}")
        media_type = media_type_of(headers.get("content-type"))
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            media_type = self._declared_media_type(op, data)
        return FetchedManifest(data, media_type, digest)

    @staticmethod
    def _declared_media_type(op: _Op, data: bytes) -> str:
        try:
            return Manifest.parse(data).media_type
        except FormatError:
            pass
        try:
            return Index.parse(data).media_type
        except FormatError as exc:
            raise op.error(RegistryError, f"neither a manifest nor an index: {exc}") from exc

    async def resolve_image(
        self, ref: Reference, platform: Platform = DEFAULT_PLATFORM
    ) -> ResolvedImage:
        """The image manifest of ``ref`` for ``platform``, through its index if it has one."""
        top = await self.get_manifest(ref)
        op = _Op(ref.registry, ref.repository, f"manifest {ref.identifier}")
        if top.media_type in MANIFEST_TYPES:
            return ResolvedImage(self._parse_manifest(op, top), top.data, top.digest)
        if top.media_type not in INDEX_TYPES:
            raise op.error(RegistryError, f"unsupported media type {top.media_type!r}")
        try:
            index = Index.parse(top.data, top.media_type)
        except FormatError as exc:
            raise op.error(RegistryError, f"invalid index: {exc}") from exc
        chosen = select_platform(index, platform)
        if chosen is None:
            offered = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
            raise op.error(
                NotFoundError, f"no manifest for platform {platform} (index has {offered})"
            )
        child = await self.get_manifest(ref.with_digest(chosen.digest))
        child_op = _Op(ref.registry, ref.repository, f"manifest {chosen.digest}")
        if child.media_type not in MANIFEST_TYPES:
            raise child_op.error(
                RegistryError, f"index entry is a {child.media_type!r}, not an image manifest"
            )
        return ResolvedImage(
            self._parse_manifest(child_op, child),
            child.data,
            child.digest,
            index,
            top.data,
            top.digest,
        )

    @staticmethod
    def _parse_manifest(op: _Op, fetched: FetchedManifest) -> Manifest:
        try:
            return Manifest.parse(fetched.data, fetched.media_type)
        except FormatError as exc:
            raise op.error(RegistryError, f"invalid manifest: {exc}") from exc

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Upload a manifest or index; return its digest.

        A reference with a digest pushes by digest (untagged; the data must have that digest,
        and a tag is ignored, as in ``ref.with_digest(d)`` for an index's children); otherwise
        it pushes to ``ref.tag``.
        """
        digest = sha256_digest(data)
        target = ref.digest or ref.tag
        if target is None:
            raise ValueError(f"{ref} names neither a tag nor a digest")
        op = _Op(ref.registry, ref.repository, f"manifest {target} upload")
        if ref.digest is not None and ref.digest != digest:
            raise op.mismatch(f"content has digest {digest}, reference says {ref.digest}")
        path = f"/v2/{ref.repository}/manifests/{target}"

        async def attempt(endpoint: Endpoint) -> None:
            headers = {"Content-Type": media_type}
            url = self._url(endpoint, path)
            async with self._open(endpoint, "PUT", url, headers, content=data) as resp:
                if resp.status_code not in (200, 201, 202):
                    await self._raise_for_status(op, endpoint, resp)
                claimed = resp.headers.get("docker-content-digest", "")
                if claimed.startswith("sha256:") and claimed != digest:
                    raise op.mismatch(f"registry stored digest {claimed}, sent {digest}")

        await self._push(ref, op, attempt, bounded=True)
        return digest

    # -- blobs -------------------------------------------------------------------------------

    async def get_blob(self, ref: Reference, digest: str) -> bytes:
        """A whole blob in memory, verified against ``digest``."""
        sink = MemorySink()
        await self._fetch_blob(ref, digest, sink, None)
        return sink.getvalue()

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
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        sink = FileSink(temporary)
        try:
            await self._fetch_blob(ref, digest, sink, progress)
            await sink.commit(path)
        finally:
            await sink.aclose()
            with anyio.CancelScope(shield=True):
                await anyio.Path(temporary).unlink(missing_ok=True)
        return sink.size

    async def _fetch_blob(
        self,
        ref: Reference,
        digest: str,
        sink: Sink,
        progress: Callable[[int], None] | None,
    ) -> None:
        op = _blob_op(ref, digest, f"blob {digest}")
        path = f"/v2/{ref.repository}/blobs/{digest}"

        async def attempt(endpoint: Endpoint) -> None:
            headers = dict(_IDENTITY)
            resume = sink.size
            if resume:
                headers["Range"] = f"bytes={resume}-"
            async with self._open(endpoint, "GET", self._url(endpoint, path), headers) as resp:
                if resume and resp.status_code == 206:
                    content_range = parse_content_range(resp.headers.get("content-range"))
                    if content_range is None or content_range.first != resume:
                        await sink.reset()
                        raise _Retryable("resumed download answered with another range")
                elif resume and resp.status_code == 416:
                    await sink.reset()
                    raise _Retryable("could not resume the download")
                elif resp.status_code == 200:
                    if resume:
                        await sink.reset()
                else:
                    await self._raise_for_status(op, endpoint, resp)
                await _drain(resp, sink, progress)

        await self._pull(ref, op, attempt, bounded=False)
        actual = sink.digest()
        if actual != digest:
            raise op.mismatch(f"content of {sink.size} bytes has digest {actual}")

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
    ) -> bytes:
        """Exactly the bytes ``[offset, offset + length)`` of a blob.

        The answer must be a 206 whose Content-Range is that range, else
        RangeNotSupportedError. A short body is retried. Not verified: the caller checks the
        chunk digests it knows.

        ``stall_timeout`` abandons an attempt when no byte arrives (or no connection is made)
        for that long, and retries it under the policy, so a stalled server costs about that
        much rather than the client's whole timeout. ``on_retry`` is called with the cause
        before each retry, ``on_attempt`` as each attempt starts, ``on_progress`` when an
        answer's headers and each piece of its body arrive.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return b""
        last = offset + length - 1
        op = _blob_op(ref, digest, f"blob {digest}, range {offset}-{last}")
        path = f"/v2/{ref.repository}/blobs/{digest}"
        headers = {**_IDENTITY, "Range": f"bytes={offset}-{last}"}
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be positive, not {stall_timeout}")

        async def attempt(endpoint: Endpoint) -> bytes:
            if on_attempt is not None:
                on_attempt()
            timeout = self._stall_timeout(stall_timeout, endpoint)
            key = (endpoint.host, ref.repository, digest)
            cached = self._locations.get(key)
            if cached is not None:
                try:
                    async with self._open(
                        endpoint, "GET", cached, headers, timeout=timeout
                    ) as resp:
                        if resp.status_code not in (401, 403):
                            return await self._take_range(
                                op, endpoint, resp, offset, length, on_progress
                            )
                except (httpx.TransportError, _Retryable):
                    # Storage is failing: the next attempt asks the registry again.
                    self._locations.pop(key, None)
                    raise
                # A presigned URL expired: ask the registry for a fresh one, once.
                log.debug(
                    "redirect target for %s answered %d; re-resolving", digest, resp.status_code
                )
                self._locations.pop(key, None)
            url = self._url(endpoint, path)
            async with self._open(endpoint, "GET", url, headers, timeout=timeout) as resp:
                if resp.url != url and resp.status_code == 206:
                    self._remember_location(key, resp.url)
                return await self._take_range(op, endpoint, resp, offset, length, on_progress)

        return await self._pull(ref, op, attempt, bounded=True, on_retry=on_retry)

    def _stall_timeout(
        self, stall_timeout: float | None, endpoint: Endpoint
    ) -> httpx.Timeout | None:
        """The endpoint's timeouts with connect, read and write cut to ``stall_timeout``.

        httpx applies the read timeout to each socket read, headers included, so it fires
        when no byte has arrived for that long, however long the whole body takes.
        """
        if stall_timeout is None:
            return None
        base = (endpoint.http or self._http).timeout

        def cut(value: float | None) -> float:
            return stall_timeout if value is None else min(value, stall_timeout)

        return httpx.Timeout(
            connect=cut(base.connect), read=cut(base.read), write=cut(base.write), pool=base.pool
        )

    def _remember_location(self, key: tuple[str, str, str], url: httpx.URL) -> None:
        self._locations[key] = url
        self._locations.move_to_end(key)
        while len(self._locations) > _LOCATION_CACHE_SIZE:
            self._locations.popitem(last=False)

    async def _take_range(
        self,
        op: _Op,
        endpoint: Endpoint,
        resp: httpx.Response,
        offset: int,
        length: int,
        progress: Callable[[], None] | None = None,
    ) -> bytes:
        if progress is not None:
            progress()
        last = offset + length - 1
        if resp.status_code == 200:
            raise op.error(
                RangeNotSupportedError, "answered 200 with the whole blob, not 206", status=200
            )
        if resp.status_code != 206:
            await self._raise_for_status(op, endpoint, resp)
        value = resp.headers.get("content-range")
        content_range = parse_content_range(value)
        if content_range is None or (content_range.first, content_range.last) != (offset, last):
            if (
                content_range is not None
                and content_range.first == offset
                and content_range.size is not None
                and content_range.last == content_range.size - 1
            ):
                raise op.error(
                    RegistryError,
                    f"range ends past the blob's {content_range.size} bytes",
                    status=416,
                )
            raise op.error(
                RangeNotSupportedError,
                f"answered 206 with Content-Range {value!r}, expected bytes {offset}-{last}",
                status=206,
            )
        data = await _read_limited(resp, length, progress)
        if data is None:
            raise op.error(RangeNotSupportedError, f"body longer than the {length} bytes asked")
        if len(data) != length:
            raise _Retryable(f"short body: {len(data)} of {length} bytes")
        return data

    async def blob_size(self, ref: Reference, digest: str) -> int:
        """A blob's size: HEAD, or ``GET Range: bytes=0-0`` where HEAD gives no length."""
        op = _blob_op(ref, digest, f"blob {digest} size")
        path = f"/v2/{ref.repository}/blobs/{digest}"

        async def attempt(endpoint: Endpoint) -> int:
            url = self._url(endpoint, path)
            async with self._open(endpoint, "HEAD", url, _IDENTITY) as resp:
                size = _content_length(resp)
                status = resp.status_code
                if status == 200 and size is not None:
                    return size
                # Storage URLs presigned for GET often refuse HEAD: then ask with a GET.
                redirected = resp.url.netloc != endpoint.base.netloc
                if (
                    status in (404, 429)
                    or status >= 500
                    or (status in (401, 403) and not redirected)
                ):
                    await self._raise_for_status(op, endpoint, resp)
            headers = {**_IDENTITY, "Range": "bytes=0-0"}
            async with self._open(endpoint, "GET", url, headers) as resp:
                if resp.status_code == 206:
                    content_range = parse_content_range(resp.headers.get("content-range"))
                    if content_range is not None and content_range.size is not None:
                        return content_range.size
                    raise op.error(RangeNotSupportedError, "206 without a blob size")
                size = _content_length(resp)
                if resp.status_code == 200 and size is not None:
                    return size
                await self._raise_for_status(op, endpoint, resp)

        return await self._pull(ref, op, attempt, bounded=True)

    async def has_blob(self, ref: Reference, digest: str) -> bool:
        """Whether the registry (or a mirror) serves the blob."""
        return await self._has_blob(ref, digest, for_push=False)

    async def _has_blob(self, ref: Reference, digest: str, *, for_push: bool) -> bool:
        op = _blob_op(ref, digest, f"blob {digest} existence")
        path = f"/v2/{ref.repository}/blobs/{digest}"

        async def attempt(endpoint: Endpoint) -> bool:
            async with self._open(endpoint, "HEAD", self._url(endpoint, path), _IDENTITY) as resp:
                if resp.status_code == 200:
                    return True
                if resp.status_code == 404:
                    return False
                await self._raise_for_status(op, endpoint, resp)

        if for_push:  # asked of the host the blob would be pushed to
            return await self._push(ref, op, attempt, bounded=True)
        return await self._pull(ref, op, attempt, bounded=True)

    async def push_blob(self, ref: Reference, source: bytes | Path, digest: str, size: int) -> None:
        """Upload a blob unless the registry has it: one POST, then one PUT with the bytes."""
        op = _blob_op(ref, digest, f"blob {digest} upload")
        if isinstance(source, bytes):
            if len(source) != size or sha256_digest(source) != digest:
                raise op.mismatch(f"the {len(source)} bytes given are not {digest} of size {size}")
        else:
            actual_size = (await anyio.Path(source).stat()).st_size
            if actual_size != size:
                raise op.mismatch(f"{source} has {actual_size} bytes, expected {size}")
        if await self._has_blob(ref, digest, for_push=True):
            return
        start_path = f"/v2/{ref.repository}/blobs/uploads/"

        async def attempt(endpoint: Endpoint) -> None:
            start = self._url(endpoint, start_path)
            async with self._open(endpoint, "POST", start, {"Content-Length": "0"}) as resp:
                if resp.status_code != 202:
                    await self._raise_for_status(op, endpoint, resp)
                location = resp.headers.get("location")
                if not location:
                    raise op.error(RegistryError, "upload started without a Location")
                upload = resp.url.join(location).copy_merge_params({"digest": digest})
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            if isinstance(source, bytes):
                async with self._open(endpoint, "PUT", upload, headers, content=source) as resp:
                    await self._check_upload(op, endpoint, resp)
                return
            async with await anyio.open_file(source, "rb") as file:

                async def chunks() -> AsyncGenerator[bytes, None]:
                    while chunk := await file.read(_CHUNK):
                        yield chunk

                stream = chunks()
                try:
                    async with self._open(endpoint, "PUT", upload, headers, content=stream) as resp:
                        await self._check_upload(op, endpoint, resp)
                finally:
                    await stream.aclose()

        await self._push(ref, op, attempt, bounded=False)

    async def _check_upload(self, op: _Op, endpoint: Endpoint, resp: httpx.Response) -> None:
        if resp.status_code in (201, 204):
            return
        if resp.status_code == 400:
            detail = error_detail(await self._error_body(resp))
            if "DIGEST_INVALID" in detail:
                raise op.mismatch(f"the registry computed another digest ({detail})")
            raise op.error(RegistryError, f"HTTP 400: {detail}", status=400)
        await self._raise_for_status(op, endpoint, resp)

    # -- plumbing ----------------------------------------------------------------------------

    def _url(self, endpoint: Endpoint, path: str) -> httpx.URL:
        # Paths are written from the standard API root, /v2; a host may have another.
        url = endpoint.base.copy_with(path=endpoint.root + path.removeprefix("/v2"))
        if endpoint.mirror_of:
            url = url.copy_merge_params({"ns": endpoint.mirror_of})
        return url

    @staticmethod
    def _op_at(op: _Op, endpoint: Endpoint) -> _Op:
        """``op`` as done on ``endpoint``: another host than the registry is named in errors."""
        return op if endpoint.mirror_of is None else _Op(endpoint.host, op.repository, op.what)

    async def _pull(
        self,
        ref: Reference,
        op: _Op,
        attempt: Callable[[Endpoint], Awaitable[T]],
        *,
        bounded: bool,
        need: Capability = Capability.PULL,
        on_retry: Callable[[str], None] | None = None,
    ) -> T:
        """Run a read-only operation on each host that may do it, in order: once on each but
        the last (the mirrors), then on the last with retries."""
        route = await self._router.route(ref.registry)
        endpoints = [endpoint for endpoint in route.endpoints if need in endpoint.capabilities]
        if not endpoints:
            what = (need.name or "").lower()
            raise op.error(RegistryError, f"no host of the registry may {what}{route.source}")
        *mirrors, last = endpoints
        once = RetryPolicy(attempts=1, total_timeout=self.retry.total_timeout)
        for endpoint in mirrors:
            try:
                return await self._retrying(
                    self._op_at(op, endpoint), endpoint, attempt, once, bounded=bounded
                )
            except RegistryError as exc:
                log.info("mirror %s failed, trying the next host: %s", endpoint.host, exc)
        return await self._retrying(
            self._op_at(op, last),
            last,
            attempt,
            self.retry,
            bounded=bounded,
            on_retry=on_retry,
        )

    async def _push(
        self,
        ref: Reference,
        op: _Op,
        attempt: Callable[[Endpoint], Awaitable[T]],
        *,
        bounded: bool,
    ) -> T:
        """Run a write (or the check before one) on the first host that may push."""
        route = await self._router.route(ref.registry)
        for endpoint in route.endpoints:
            if Capability.PUSH in endpoint.capabilities:
                return await self._retrying(
                    self._op_at(op, endpoint), endpoint, attempt, self.retry, bounded=bounded
                )
        raise op.error(RegistryError, f"no host of the registry may push{route.source}")

    async def _retrying(
        self,
        op: _Op,
        endpoint: Endpoint,
        attempt: Callable[[Endpoint], Awaitable[T]],
        policy: RetryPolicy,
        *,
        bounded: bool,
        on_retry: Callable[[str], None] | None = None,
    ) -> T:
        """Attempts under ``policy``. With ``bounded`` the whole operation is also cut off at
        ``total_timeout``; without (whole-blob transfers, whose time grows with their size)
        only new attempts stop then."""
        # The event loop's clock, the one the deadline and the backoff sleeps use.
        state = RetryState(policy, clock=anyio.current_time)
        cause = "none"
        last: BaseException | None = None
        replayed = refreshed = False
        with anyio.move_on_after(policy.total_timeout if bounded else None) as deadline:
            while True:
                version = self.credentials.version
                try:
                    return await attempt(endpoint)
                except AuthError:
                    # Refused with every candidate: their sources may have changed (a rotated
                    # or deleted secret, a rewritten docker config). Read them again, once.
                    if refreshed or not await self._refresh(endpoint, op, version):
                        raise
                    refreshed = True
                    continue
                except ReplayRequired:
                    # Credentials were just fetched for a one-shot body; resend it once.
                    if replayed:
                        raise op.error(AuthError, "challenged again after authenticating") from None
                    replayed = True
                    continue
                except _Fatal as exc:
                    raise op.error(RegistryError, str(exc)) from None
                except _Retryable as exc:
                    cause, retry_after, last = exc.cause, exc.retry_after, exc
                # httpcore passes a TLS alert received while reading on as the SSLError itself.
                except (httpx.TransportError, ssl.SSLError) as exc:
                    refusal = certificate_refusal(endpoint.host, exc)
                    if refusal is not None:
                        raise op.error(TLSError, refusal) from exc
                    if await self._speaks_plain_http(endpoint, exc):
                        if endpoint.plain_fallback:
                            endpoint = self._router.plain_http(endpoint)
                            continue
                        raise op.error(
                            PlainHTTPError,
                            f"{endpoint.host} speaks plain http, not https; "
                            f"pass --insecure-registry {endpoint.host}",
                        ) from exc
                    cause, retry_after, last = _describe(exc), None, exc
                except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                    raise op.error(RegistryError, _describe(exc)) from exc
                delay = state.next_delay(retry_after)
                if delay is None:
                    break
                if on_retry is not None:
                    on_retry(cause)
                log.debug(
                    "%s: attempt %d failed (%s); retrying in %.2f s",
                    op.what,
                    state.attempt - 1,
                    cause,
                    delay,
                )
                await anyio.sleep(delay)
        attempts = state.attempt
        if deadline.cancelled_caught:
            cause = f"no answer within {policy.total_timeout:g} s; last failure: {cause}"
        raise op.error(
            UnavailableError,
            f"{cause} (gave up after {attempts} attempt{'s' if attempts > 1 else ''} "
            f"in {state.elapsed:.1f} s)",
        ) from last

    async def _speaks_plain_http(self, endpoint: Endpoint, exc: Exception) -> bool:
        """Whether a failed TLS handshake was answered by a plain-http server.

        No retry can mend that, so one plain GET /v2/ settles it: any HTTP answer means the
        host wants ``--insecure-registry``. Other TLS failures (a certificate not trusted)
        and other connection errors are left to the retry policy.
        """
        if endpoint.base.scheme != "https" or not isinstance(exc, httpx.ConnectError):
            return False
        if not tls_handshake_failure(exc):
            return False
        probe = endpoint.base.copy_with(scheme="http", path=f"{endpoint.root}/")
        try:
            await self._http.get(probe, timeout=_PLAIN_HTTP_PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return True

    async def _refresh(self, endpoint: Endpoint, op: _Op, version: int) -> bool:
        changed = await self.credentials.refresh(endpoint.host, op.repository or None, version)
        if changed:
            log.info("credentials for %s/%s changed; trying again", endpoint.host, op.repository)
        return changed

    @asynccontextmanager
    async def _open(
        self,
        endpoint: Endpoint,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | AsyncIterator[bytes] | None = None,
        *,
        timeout: httpx.Timeout | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the streamed response, following redirects by hand.

        Credentials, and the headers the endpoint's hosts.toml adds, go only to the endpoint's
        own host: a redirect to object storage is sent without Authorization (presigned URLs
        refuse it). Other headers, Range included, are kept. Redirects are followed with the
        endpoint's TLS settings, as containerd does.
        """
        http = endpoint.http or self._http
        response: httpx.Response | None = None
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                own = url.netloc == endpoint.base.netloc
                sent: Mapping[str, str] | httpx.Headers = headers
                if own and endpoint.headers:
                    sent = httpx.Headers(list(endpoint.headers))
                    sent.update(headers)
                request = http.build_request(
                    method,
                    url,
                    headers=sent,
                    content=content,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                auth = self._auth if own else None
                response = await http.send(request, auth=auth, stream=True)
                location = response.headers.get("location")
                if response.status_code not in _REDIRECT_STATUSES or not location:
                    break
                await response.aclose()
                if content is not None and not isinstance(content, bytes):
                    raise _Fatal(f"{method} {url} was redirected; cannot resend its body")
                url = response.url.join(location)
                if response.status_code == 303 and method not in ("GET", "HEAD"):
                    method, content = "GET", None
            else:
                raise _Fatal(f"more than {_MAX_REDIRECTS} redirects from {url}")
            yield response
        finally:
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

    async def _error_body(self, response: httpx.Response) -> bytes:
        try:
            return await _read_limited(response, _MAX_ERROR_BODY) or b""
        except (httpx.HTTPError, httpx.StreamError):
            return b""

    async def _raise_for_status(
        self, op: _Op, endpoint: Endpoint, response: httpx.Response
    ) -> NoReturn:
        status = response.status_code
        detail = error_detail(await self._error_body(response)) or response.reason_phrase
        where = response.url.copy_with(query=None)
        foreign = response.url.netloc != endpoint.base.netloc
        if status in (401, 403):
            if foreign:
                message = f"{where} refused access (HTTP {status}: {detail})"
            else:
                tried = self.credentials.describe(endpoint.host, op.repository or None)
                known = f"were refused (tried: {tried})" if tried else "are not in the keychain"
                message = f"HTTP {status}: {detail}; credentials for {endpoint.host} {known}"
            raise op.error(AuthError, message, status=status)
        if status == 404:
            raise op.error(NotFoundError, f"not found (HTTP 404: {detail})", status=404)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            origin = f" from {where}" if foreign else ""
            raise _Retryable(f"HTTP {status}{origin}: {detail}", retry_after)
        raise op.error(RegistryError, f"HTTP {status}: {detail}", status=status)
