"""KubeClient: the few Kubernetes API verbs the agent needs, over one httpx.AsyncClient.

Each method is one request; a failure is a KubeError naming the verb, the path and the
apiserver's Status. Nothing is retried here except by ``watch_object``, whose job is to keep
a watch going. Only anyio and httpx are used, so the client runs under trio and asyncio alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import anyio
import httpx

from lazyimage import __version__
from lazyimage.kube._auth import KubeAuth
from lazyimage.kube._config import KubeConfig
from lazyimage.kube._errors import KubeError, response_error, transport_error
from lazyimage.kube._resource import ResourcePath
from lazyimage.kube._tls import ssl_context
from lazyimage.kube._watch import (
    WATCH_RETRY,
    WatchEvent,
    follow_collection,
    follow_object,
    read_events,
)
from lazyimage.retry import RetryPolicy

__all__ = ["KubeClient"]

_WATCH_CONNECTIONS = 4  # long-lived watch streams, beside the requests

log = logging.getLogger("lazyimage.kube")

_JSON = "application/json"
_MERGE_PATCH = "application/merge-patch+json"
_MAX_ERROR_BODY = 64 << 10
# A watch may be silent until the server ends it after timeoutSeconds; give it that long.
_WATCH_READ_MARGIN = 30.0

_Params = Mapping[str, str | int]


class KubeClient:
    """A Kubernetes API client. Use as ``async with KubeClient(config) as client``.

    ``timeout`` bounds each connect, read and write. ``transport`` replaces the network
    (``httpx.MockTransport`` in tests). ``retry`` spaces the failures in a row of the watches
    and, with ``attempts``, ends a watch after that many (the default, ``WATCH_RETRY``, never
    does: 0.5 s doubling up to 10 s). At most ``max_requests`` requests (watches aside) are in
    flight; the rest wait their turn here, where waiting is cheap.
    """

    def __init__(
        self,
        config: KubeConfig,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = WATCH_RETRY,
        max_requests: int = 16,
    ) -> None:
        self.config = config
        # Requests queued inside httpcore's pool cost a scan of the pool each (quadratic
        # under a burst), and more connections than it keeps alive get closed and opened
        # again, TLS handshake and all. So the pool is sized for what may run at once.
        self._requests = anyio.Semaphore(max_requests)
        connections = max_requests + _WATCH_CONNECTIONS
        self._timeout = timeout
        self._retry = retry
        # kubeconfig's tls-server-name: the name to send in SNI and to check the cert against.
        self._extensions = (
            {"sni_hostname": config.tls_server_name} if config.tls_server_name else None
        )
        self._http = httpx.AsyncClient(
            base_url=config.server,
            auth=KubeAuth(config.credentials),
            verify=ssl_context(config) if config.server.startswith("https://") else True,
            timeout=httpx.Timeout(timeout),
            headers={"Accept": _JSON, "User-Agent": f"lazyimage/{__version__}"},
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one request each ------------------------------------------------------------------

    async def get(self, path: ResourcePath, name: str) -> dict[str, Any]:
        """The object ``name``; NotFoundError if there is none."""
        return await self._call("GET", path.item(name))

    async def list(
        self,
        path: ResourcePath,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]:
        """The collection as a ``...List`` object (``items``, ``metadata.resourceVersion``)."""
        params = _selectors(label_selector, field_selector)
        return await self._call("GET", path.collection(), params=params)

    async def create(self, path: ResourcePath, body: dict[str, Any]) -> dict[str, Any]:
        """Create ``body`` in the collection; ConflictError if the name is taken."""
        return await self._call("POST", path.collection(), body=body)

    async def merge_patch(
        self,
        path: ResourcePath,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
        field_validation: str = "Strict",
    ) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to the object or its ``subresource``. With
        ``Strict`` validation, unknown or duplicate fields are an error, not silently lost."""
        return await self._call(
            "PATCH",
            path.item(name, subresource),
            params={"fieldValidation": field_validation},
            body=patch,
            content_type=_MERGE_PATCH,
        )

    async def replace_status(
        self,
        path: ResourcePath,
        name: str,
        body: dict[str, Any],
        *,
        field_validation: str = "Strict",
    ) -> dict[str, Any]:
        """Replace the status of ``name`` with ``body``'s, only if the object is still at
        ``body``'s ``metadata.resourceVersion``; ConflictError if it has moved on."""
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("resourceVersion"):
            raise ValueError("replace_status needs body.metadata.resourceVersion")
        return await self._call(
            "PUT",
            path.item(name, "status"),
            params={"fieldValidation": field_validation},
            body=body,
        )

    async def delete(self, path: ResourcePath, name: str) -> None:
        """Delete the object ``name``; NotFoundError if there is none."""
        await self._call("DELETE", path.item(name))

    # -- watches ---------------------------------------------------------------------------

    async def watch(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[WatchEvent, None]:
        """The events of one watch request, until the server ends it (after about
        ``timeout_seconds``). An ERROR event raises: GoneError for 410, else KubeError.

        Close it when done early (``contextlib.aclosing``) to release the connection at once.
        """
        params: dict[str, str | int] = {
            "watch": 1,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
            **_selectors(None, field_selector),
        }
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        where = path.collection()
        timeout = httpx.Timeout(self._timeout, read=timeout_seconds + _WATCH_READ_MARGIN)
        try:
            async with self._http.stream(
                "GET", where, params=params, timeout=timeout, extensions=self._extensions
            ) as resp:
                if resp.status_code != 200:
                    raise response_error("WATCH", where, resp.status_code, await _head(resp))
                async with aclosing(read_events(resp.aiter_lines(), "WATCH", where)) as events:
                    async for event in events:
                        yield event
        except httpx.HTTPError as exc:
            raise transport_error("WATCH", where, exc) from exc

    def watch_object(
        self, path: ResourcePath, name: str
    ) -> AsyncGenerator[dict[str, Any] | None, None]:
        """Every state of the object ``name``: the current one (None if absent), then each
        change (None once deleted). It lists, watches, resumes after closed streams, lists
        again after 410 Gone, and retries connection and server errors with capped backoff,
        for as long as the caller iterates. Close it with ``contextlib.aclosing``.
        """
        return follow_object(self, path, name, retry=self._retry)

    def watch_collection(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        max_failures: int | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every object of the collection (as ADDED), then each change, resuming and listing
        again like ``watch_object``; with ``max_failures``, that many failures in a row (a
        403, the server gone) raise the last one. Close it with ``contextlib.aclosing``."""
        return follow_collection(
            self,
            path,
            field_selector=field_selector,
            retry=self._retry,
            max_failures=max_failures,
        )

    # -- plumbing --------------------------------------------------------------------------

    async def _call(
        self,
        verb: str,
        where: str,
        *,
        params: _Params | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = _JSON,
    ) -> dict[str, Any]:
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else None
        try:
            async with self._requests:
                resp = await self._http.request(
                    verb,
                    where,
                    params=params,
                    content=content,
                    headers=headers,
                    extensions=self._extensions,
                )
        except httpx.HTTPError as exc:
            raise transport_error(verb, where, exc) from exc
        for warning in resp.headers.get_list("warning"):
            log.warning("%s %s: apiserver warning: %s", verb, where, warning)
        if not 200 <= resp.status_code < 300:
            raise response_error(verb, where, resp.status_code, resp.content[:_MAX_ERROR_BODY])
        try:
            result = resp.json()
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise KubeError(f"{verb} {where}: the answer is not a JSON object", status=200)
        return result


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if label_selector is not None:
        params["labelSelector"] = label_selector
    if field_selector is not None:
        params["fieldSelector"] = field_selector
    return params


async def _head(resp: httpx.Response) -> bytes:
    """The start of an error answer's body, read no further than needed."""
    data = bytearray()
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) >= _MAX_ERROR_BODY:
            break
    return bytes(data)
