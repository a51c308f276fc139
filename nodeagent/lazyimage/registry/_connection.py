"""The state every registry operation shares, and sending one request through it.

A ``Connection`` holds the httpx client (one connection pool), the auth flow with its token
cache, the credentials and the router that knows each registry's hosts. ``open`` sends one
request to an endpoint (auth, the endpoint's headers, redirects followed by hand) and
``raise_for_status`` turns an answer that is not what was asked into an error, or into a
``Retryable`` for the retry loop.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import NoReturn

import anyio
import httpx

from lazyimage.errors import AuthError, NotFoundError, RegistryError
from lazyimage.registry._auth import RegistryAuth
from lazyimage.registry._bodies import error_body
from lazyimage.registry._credentials import CredentialStore
from lazyimage.registry._errors import Fatal, Op, Retryable
from lazyimage.registry._hostsdir import RegistryHosts
from lazyimage.registry._http import error_detail, parse_retry_after
from lazyimage.registry._routes import Endpoint, Router
from lazyimage.registry._tls import tls_handshake_failure

__all__ = ["CLOSE_TIMEOUT", "Connection"]

_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PLAIN_HTTP_PROBE_TIMEOUT = 5.0
# The longest a response's closing may take, cancelled or not: it only releases or closes
# the connection, and must not hold a caller past its deadline.
CLOSE_TIMEOUT = 1.0


class Connection:
    """One connection pool, auth flow and router, for every operation of a client.

    ``transport`` replaces the network (then every host shares the one client: TLS settings
    of hosts.toml mean nothing there).
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore,
        insecure_registries: Sequence[str],
        timeout: float,
        mirrors: Mapping[str, Sequence[str]],
        hosts: RegistryHosts | None,
        max_connections: int,
        user_agent: str,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.credentials = credentials
        self._auth = RegistryAuth(credentials)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # Digests are over the bytes as stored: never let a server re-encode them.
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._transport = transport
        self.http = self._new_http(httpx.Timeout(timeout), True)
        self.router = Router(
            insecure=insecure_registries,
            mirrors=mirrors,
            hosts=hosts,
            timeout=self.http.timeout,
            new_client=self._new_http if transport is None else None,
        )

    def _new_http(self, timeout: httpx.Timeout, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=timeout,
            limits=self._limits,
            headers=self._headers,
            follow_redirects=False,
            verify=verify,
            transport=self._transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.router.aclose()

    @staticmethod
    def url(endpoint: Endpoint, path: str) -> httpx.URL:
        # Paths are written from the standard API root, /v2; a host may have another.
        url = endpoint.base.copy_with(path=endpoint.root + path.removeprefix("/v2"))
        if endpoint.mirror_of:
            url = url.copy_merge_params({"ns": endpoint.mirror_of})
        return url

    def stall_timeout(
        self, stall_timeout: float | None, endpoint: Endpoint
    ) -> httpx.Timeout | None:
        """The endpoint's timeouts with connect, read and write cut to ``stall_timeout``.

        httpx applies the read timeout to each socket read, headers included, so it fires
        when no byte has arrived for that long, however long the whole body takes.
        """
        if stall_timeout is None:
            return None
        base = (endpoint.http or self.http).timeout

        def cut(value: float | None) -> float:
            return stall_timeout if value is None else min(value, stall_timeout)

        return httpx.Timeout(
            connect=cut(base.connect), read=cut(base.read), write=cut(base.write), pool=base.pool
        )

    @asynccontextmanager
    async def open(
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
        http = endpoint.http or self.http
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
                    raise Fatal(f"{method} {url} was redirected; cannot resend its body")
                url = response.url.join(location)
                if response.status_code == 303 and method not in ("GET", "HEAD"):
                    method, content = "GET", None
            else:
                raise Fatal(f"more than {_MAX_REDIRECTS} redirects from {url}")
            yield response
        finally:
            if response is not None:
                with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await response.aclose()

    async def raise_for_status(
        self, op: Op, endpoint: Endpoint, response: httpx.Response
    ) -> NoReturn:
        """The error an answer that is not what was asked stands for (``Retryable`` for
        5xx and 429, with the server's Retry-After)."""
        status = response.status_code
        detail = error_detail(await error_body(response)) or response.reason_phrase
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
            raise Retryable(f"HTTP {status}{origin}: {detail}", retry_after)
        raise op.error(RegistryError, f"HTTP {status}: {detail}", status=status)

    async def speaks_plain_http(self, endpoint: Endpoint, exc: Exception) -> bool:
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
            await self.http.get(probe, timeout=_PLAIN_HTTP_PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return True
