"""Reading response bodies: raw (never decoded), bounded, or copied to a sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import httpx

from lazyimage.registry._sinks import Sink

__all__ = ["CHUNK", "content_length", "drain", "error_body", "read_exact", "read_limited"]

# The size of large writes: to a sink, and of the pieces of a file pushed.
CHUNK = 1 << 20
_MAX_ERROR_BODY = 64 << 10


def content_length(response: httpx.Response) -> int | None:
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


async def read_limited(
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


async def read_exact(
    response: httpx.Response, length: int, progress: Callable[[], None] | None = None
) -> memoryview | None:
    """The raw body, received into one buffer of ``length`` bytes and returned as a view of
    what arrived (shorter if the body was), or None if the body is longer. A range read is
    up to tens of MB: it is never copied, nor held twice while a buffer grows."""
    buffer = memoryview(bytearray(length))
    filled = 0
    async for chunk in _raw_chunks(response):
        if progress is not None:
            progress()
        end = filled + len(chunk)
        if end > length:
            return None
        buffer[filled:end] = chunk
        filled = end
    return buffer[:filled]


async def error_body(response: httpx.Response) -> bytes:
    """The start of an error answer's body, or nothing if it cannot be read."""
    try:
        return await read_limited(response, _MAX_ERROR_BODY) or b""
    except (httpx.HTTPError, httpx.StreamError):
        return b""


async def drain(
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
            if len(pending) >= CHUNK:
                await flush()
    finally:
        if pending:
            with anyio.CancelScope(shield=True):
                await flush()
