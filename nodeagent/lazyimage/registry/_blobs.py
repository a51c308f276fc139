"""Whole blobs: downloads (resumed where the server allows), sizes, and existence checks."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import anyio

from lazyimage.errors import RangeNotSupportedError
from lazyimage.registry._bodies import content_length, drain
from lazyimage.registry._errors import Retryable, blob_op
from lazyimage.registry._http import IDENTITY, parse_content_range
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._runner import Runner
from lazyimage.registry._sinks import FileSink, MemorySink, Sink

__all__ = ["Blobs"]


class Blobs:
    """Blob downloads and questions about blobs, over ``runner``."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._connection = runner.connection

    async def get(self, ref: Reference, digest: str) -> bytes:
        """A whole blob in memory, verified against ``digest``."""
        sink = MemorySink()
        await self._fetch(ref, digest, sink, None)
        return sink.getvalue()

    async def download(
        self,
        ref: Reference,
        digest: str,
        path: Path,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream a blob to ``path`` through a temporary file; verify, then rename. Returns
        the size."""
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        sink = FileSink(temporary)
        try:
            await self._fetch(ref, digest, sink, progress)
            await sink.commit(path)
        finally:
            await sink.aclose()
            with anyio.CancelScope(shield=True):
                await anyio.Path(temporary).unlink(missing_ok=True)
        return sink.size

    async def _fetch(
        self,
        ref: Reference,
        digest: str,
        sink: Sink,
        progress: Callable[[int], None] | None,
    ) -> None:
        op = blob_op(ref, digest, f"blob {digest}")
        path = f"/v2/{ref.repository}/blobs/{digest}"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> None:
            headers = dict(IDENTITY)
            resume = sink.size
            if resume:
                headers["Range"] = f"bytes={resume}-"
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "GET", url, headers) as resp:
                if resume and resp.status_code == 206:
                    content_range = parse_content_range(resp.headers.get("content-range"))
                    if content_range is None or content_range.first != resume:
                        await sink.reset()
                        raise Retryable("resumed download answered with another range")
                elif resume and resp.status_code == 416:
                    await sink.reset()
                    raise Retryable("could not resume the download")
                elif resp.status_code == 200:
                    if resume:
                        await sink.reset()
                else:
                    await connection.raise_for_status(op, endpoint, resp)
                await drain(resp, sink, progress)

        await self._runner.pull(ref, op, attempt, bounded=False)
        actual = sink.digest()
        if actual != digest:
            raise op.mismatch(f"content of {sink.size} bytes has digest {actual}")

    async def size(self, ref: Reference, digest: str) -> int:
        """A blob's size: HEAD, or ``GET Range: bytes=0-0`` where HEAD gives no length."""
        op = blob_op(ref, digest, f"blob {digest} size")
        path = f"/v2/{ref.repository}/blobs/{digest}"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> int:
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "HEAD", url, IDENTITY) as resp:
                size = content_length(resp)
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
                    await connection.raise_for_status(op, endpoint, resp)
            headers = {**IDENTITY, "Range": "bytes=0-0"}
            async with connection.open(endpoint, "GET", url, headers) as resp:
                if resp.status_code == 206:
                    content_range = parse_content_range(resp.headers.get("content-range"))
                    if content_range is not None and content_range.size is not None:
                        return content_range.size
                    raise op.error(RangeNotSupportedError, "206 without a blob size")
                size = content_length(resp)
                if resp.status_code == 200 and size is not None:
                    return size
                await connection.raise_for_status(op, endpoint, resp)

        return await self._runner.pull(ref, op, attempt, bounded=True)

    async def exists(self, ref: Reference, digest: str, *, for_push: bool) -> bool:
        """Whether the registry (or a mirror) serves the blob; ``for_push``: asked of the
        host the blob would be pushed to."""
        op = blob_op(ref, digest, f"blob {digest} existence")
        path = f"/v2/{ref.repository}/blobs/{digest}"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> bool:
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "HEAD", url, IDENTITY) as resp:
                if resp.status_code == 200:
                    return True
                if resp.status_code == 404:
                    return False
                await connection.raise_for_status(op, endpoint, resp)

        if for_push:
            return await self._runner.push(ref, op, attempt, bounded=True)
        return await self._runner.pull(ref, op, attempt, bounded=True)
