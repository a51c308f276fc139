"""Where a downloaded blob goes: memory or a file. Both hash as they go and can restart."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
from anyio.abc import AsyncResource

__all__ = ["FileSink", "MemorySink", "Sink"]


class Sink(AsyncResource):
    """Appends bytes and hashes them. ``reset`` drops everything, for a download from zero."""

    def __init__(self) -> None:
        self.size = 0
        self._hash = hashlib.sha256()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    async def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    async def reset(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    async def aclose(self) -> None:
        return None


class MemorySink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        await super().write(data)
        self._buffer += data

    async def reset(self) -> None:
        await super().reset()
        self._buffer.clear()

    def getvalue(self) -> bytes:
        return bytes(self._buffer)


class FileSink(Sink):
    """Writes to ``path`` (a temporary name); ``commit`` syncs and renames it into place."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: anyio.AsyncFile[bytes] | None = None

    async def _opened(self) -> anyio.AsyncFile[bytes]:
        if self._file is None:
            self._file = await anyio.open_file(self.path, "wb")
        return self._file

    async def write(self, data: bytes) -> None:
        file = await self._opened()
        await file.write(data)
        await super().write(data)

    async def reset(self) -> None:
        await super().reset()
        file = await self._opened()
        await file.seek(0)
        await file.truncate()

    async def commit(self, target: Path) -> None:
        file = await self._opened()
        await file.flush()
        # Durable before visible: a crash never leaves a torn file under the final name.
        await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
        await self.aclose()
        await anyio.to_thread.run_sync(os.replace, self.path, target)

    async def aclose(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with anyio.CancelScope(shield=True):
                await file.aclose()
