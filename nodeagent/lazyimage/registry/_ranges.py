"""Range reads of blobs: exact 206 answers, a cache of where blobs redirect to, stall cut-offs.

A blob is usually redirected to object storage. The target of a range read that worked is
remembered (per host, repository and digest), so later reads go straight there; a target that
fails is forgotten, and one that refuses (an expired presigned URL) is replaced by asking the
registry again within the same attempt.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import httpx

from lazyimage.errors import RangeNotSupportedError, RegistryError
from lazyimage.registry._bodies import read_exact
from lazyimage.registry._errors import Op, Retryable, blob_op
from lazyimage.registry._http import IDENTITY, parse_content_range
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._runner import Runner

__all__ = ["Ranges"]

log = logging.getLogger("lazyimage.registry")

_LOCATION_CACHE_SIZE = 4096
_Key = tuple[str, str, str]  # endpoint host, repository, digest


class Ranges:
    """Range reads over ``runner``, with the redirect targets they found."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._connection = runner.connection
        # Where a blob was redirected to, so range reads go straight to object storage.
        self._locations: OrderedDict[_Key, httpx.URL] = OrderedDict()

    async def read(
        self,
        ref: Reference,
        digest: str,
        offset: int,
        length: int,
        *,
        stall_timeout: float | None,
        on_retry: Callable[[str], None] | None,
        on_progress: Callable[[], None] | None,
        on_attempt: Callable[[], None] | None,
        deadline: float | None,
    ) -> memoryview:
        """Exactly the bytes ``[offset, offset + length)`` of a blob (see
        RegistryClient.read_range)."""
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return memoryview(b"")
        last = offset + length - 1
        op = blob_op(ref, digest, f"blob {digest}, range {offset}-{last}")
        path = f"/v2/{ref.repository}/blobs/{digest}"
        headers = {**IDENTITY, "Range": f"bytes={offset}-{last}"}
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be positive, not {stall_timeout}")
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> memoryview:
            if on_attempt is not None:
                on_attempt()
            timeout = connection.stall_timeout(stall_timeout, endpoint)
            key = (endpoint.host, ref.repository, digest)
            cached = self._locations.get(key)
            if cached is not None:
                try:
                    async with connection.open(
                        endpoint, "GET", cached, headers, timeout=timeout
                    ) as resp:
                        if resp.status_code not in (401, 403):
                            return await self._take(op, endpoint, resp, offset, length, on_progress)
                except (httpx.TransportError, Retryable):
                    # Storage is failing: the next attempt asks the registry again.
                    self._locations.pop(key, None)
                    raise
                # A presigned URL expired: ask the registry for a fresh one, once.
                log.debug(
                    "redirect target for %s answered %d; re-resolving", digest, resp.status_code
                )
                self._locations.pop(key, None)
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "GET", url, headers, timeout=timeout) as resp:
                if resp.url != url and resp.status_code == 206:
                    self._remember(key, resp.url)
                return await self._take(op, endpoint, resp, offset, length, on_progress)

        return await self._runner.pull(
            ref, op, attempt, bounded=True, on_retry=on_retry, deadline=deadline
        )

    def _remember(self, key: _Key, url: httpx.URL) -> None:
        self._locations[key] = url
        self._locations.move_to_end(key)
        while len(self._locations) > _LOCATION_CACHE_SIZE:
            self._locations.popitem(last=False)

    async def _take(
        self,
        op: Op,
        endpoint: Endpoint,
        resp: httpx.Response,
        offset: int,
        length: int,
        progress: Callable[[], None] | None = None,
    ) -> memoryview:
        """The range's bytes from an answer, which must be a 206 of exactly that range."""
        if progress is not None:
            progress()
        last = offset + length - 1
        if resp.status_code == 200:
            raise op.error(
                RangeNotSupportedError, "answered 200 with the whole blob, not 206", status=200
            )
        if resp.status_code != 206:
            await self._connection.raise_for_status(op, endpoint, resp)
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
        data = await read_exact(resp, length, progress)
        if data is None:
            raise op.error(RangeNotSupportedError, f"body longer than the {length} bytes asked")
        if len(data) != length:
            raise Retryable(f"short body: {len(data)} of {length} bytes")
        return data
