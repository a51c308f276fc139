"""The Authorization header, kept current: refreshed when it expires, renewed after a 401.

A loaded ``kubernetes.client.Configuration`` carries the header (a bearer token from a
kubeconfig, an exec plugin or a service account; basic auth) and, for credentials that
expire, a refresh hook: it runs the exec plugin again once its token is within five minutes
of expiry, and reads a service account's token file again every minute. ``Credentials`` runs
that hook at most every ``recheck`` seconds. After a 401 it loads the configuration again
from its source, which runs an exec plugin and reads token files anew, and the request is
sent once more with the new header. Hooks and loads block, so they run in a worker thread;
only anyio is used, so this works under trio and asyncio alike.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING

import anyio
import httpx

from lazyimage.kube._source import ConfigSource

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = ["Credentials", "KubeAuth", "authorization_of"]

RECHECK_SECONDS = 60.0
# A server that keeps refusing must not make every request run an exec plugin.
RENEW_AT_MOST_EVERY = 5.0


def authorization_of(configuration: Configuration) -> str | None:
    """The Authorization header a Configuration holds, without running its refresh hook."""
    value = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    if not value:
        return None
    prefix = configuration.api_key_prefix.get("BearerToken")
    scheme, _, credential = (f"{prefix} {value}" if prefix else str(value)).strip().partition(" ")
    if not credential.strip():
        scheme, credential = "Bearer", scheme
    # The in-cluster loader writes "bearer " and the token file as read, newline and all.
    if scheme.lower() == "bearer":
        scheme = "Bearer"
    return f"{scheme} {credential.strip()}"


class Credentials:
    """The current Authorization header of one loaded configuration (None: none is sent,
    as with client certificates alone). Safe to share between clients and event loops."""

    def __init__(
        self,
        configuration: Configuration,
        source: ConfigSource | None,
        *,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configuration = configuration
        self._source = source
        self._recheck = recheck
        self._clock = clock
        self._header = authorization_of(configuration)
        self._checked = clock()
        self._renewed = -math.inf
        self._lock = threading.Lock()  # one refresh or renewal at a time, in whatever thread

    @property
    def header(self) -> str | None:
        """The header as last loaded or refreshed; no I/O."""
        return self._header

    def _due(self) -> bool:
        hook = self._configuration.refresh_api_key_hook
        return hook is not None and self._clock() - self._checked >= self._recheck

    async def current(self) -> str | None:
        """The header to send now, refreshed first if its recheck is due."""
        if not self._due():
            return self._header
        return await anyio.to_thread.run_sync(self.refresh_now, abandon_on_cancel=True)

    async def renew(self, refused: str | None) -> str | None:
        """The header to use after the server refused ``refused`` with 401: loaded anew
        from the source, unless another request already did so."""
        return await anyio.to_thread.run_sync(self.renew_now, refused, abandon_on_cancel=True)

    def refresh_now(self) -> str | None:
        """Blocking: run the configuration's refresh hook if due (in a worker thread)."""
        with self._lock:
            if self._due():
                try:
                    if self._source is not None:
                        self._source.refresh(self._configuration)
                finally:
                    self._checked = self._clock()  # a failed refresh waits its turn too
                self._header = authorization_of(self._configuration)
            return self._header

    def renew_now(self, refused: str | None) -> str | None:
        """Blocking: load the configuration again from its source (in a worker thread)."""
        with self._lock:
            stale = self._header == refused
            recent = self._clock() - self._renewed < RENEW_AT_MOST_EVERY
            if self._source is None or not stale or recent:
                return self._header
            try:
                self._configuration = self._source.load()
            finally:
                self._renewed = self._clock()  # a failed renewal counts too
            self._header = authorization_of(self._configuration)
            self._checked = self._renewed
            return self._header


class KubeAuth(httpx.Auth):
    """Sends the current Authorization header; after a 401, renews it and sends the request
    once more if the header changed."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("lazyimage.kube credentials need an httpx.AsyncClient")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        header = await self._credentials.current()
        if header is not None:
            request.headers["Authorization"] = header
        response = yield request
        if response.status_code != 401 or header is None:
            return
        renewed = await self._credentials.renew(header)
        if renewed is not None and renewed != header:
            request.headers["Authorization"] = renewed
            yield request
