"""A mounted layer: its tree, file reads through a chunk reader, and the access recorder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from lazyimage.errors import VerificationError
from lazyimage.estargz import Chunk
from lazyimage.layer._recorder import AccessRecorder
from lazyimage.layer._tree import LayerTree

__all__ = ["Following", "ReadChunks", "ReadSlice", "RemoteLayer"]

# The chunks right after a file in the blob, up to a limit in compressed bytes (the file's
# ``tree.chunks_following``): worth fetching in the same request as a miss of the file,
# since files of one directory tend to be read together.
Following = Callable[[int], Sequence[Chunk]]


class ReadChunks(Protocol):
    """Verified, uncompressed bytes of each chunk, in order: ``fetcher.read`` with the
    priority bound by the caller. ``following`` is passed only to readers of a RemoteLayer
    built with ``read_ahead=True``."""

    def __call__(
        self, chunks: Sequence[Chunk], /, *, following: Following | None = None
    ) -> Awaitable[list[bytes]]: ...


class ReadSlice(Protocol):
    """Verified bytes ``[start, start+length)`` of one chunk: ``fetcher.read_slice``. Lets a
    read inside one cached chunk skip loading the whole chunk."""

    def __call__(
        self, chunk: Chunk, start: int, length: int, /, *, following: Following | None = None
    ) -> Awaitable[bytes]: ...


class RemoteLayer:
    """One layer's files, read lazily. Failures of ``read_chunks`` propagate unchanged.

    The reader is trusted to return verified chunk bytes; this class only slices them, and
    refuses a chunk of the wrong length rather than serve misplaced bytes. With
    ``read_ahead`` the readers are told which chunks follow the file read (``following``).
    """

    def __init__(
        self,
        tree: LayerTree,
        read_chunks: ReadChunks,
        recorder: AccessRecorder | None = None,
        read_slice: ReadSlice | None = None,
        *,
        read_ahead: bool = False,
    ) -> None:
        self.tree = tree
        self.recorder = recorder if recorder is not None else AccessRecorder()
        self._read_chunks = read_chunks
        self._read_slice = read_slice
        self._read_ahead = read_ahead

    async def read(self, node_id: int, offset: int, size: int) -> bytes:
        """File bytes ``[offset, offset+size)``: exactly ``size`` of them unless EOF is nearer."""
        end = min(offset + size, self.tree.size(node_id))
        if offset >= end:
            return b""
        if node_id not in self.recorder:
            self.recorder.record(node_id, self.tree.path(node_id))
        chunks = self.tree.chunks_for(node_id, offset, end - offset)
        following: Following | None = None
        if self._read_ahead:
            # Bound lazily: the reader asks only on a miss.
            following = partial(self.tree.chunks_following, node_id)
        if len(chunks) == 1 and self._read_slice is not None:
            chunk = chunks[0]
            start = offset - chunk.chunk_offset
            if following is None:
                data = await self._read_slice(chunk, start, end - offset)
            else:
                data = await self._read_slice(chunk, start, end - offset, following=following)
            if len(data) != end - offset:
                raise VerificationError(
                    f"chunk of {chunk.path!r} at {chunk.chunk_offset}: "
                    f"{len(data)} bytes for a read of {end - offset}"
                )
            return data
        if following is None:
            datas = await self._read_chunks(chunks)
        else:
            datas = await self._read_chunks(chunks, following=following)
        if len(datas) != len(chunks):
            raise VerificationError(
                f"reader returned {len(datas)} chunks for {len(chunks)} of {chunks[0].path!r}"
            )
        pieces: list[bytes | memoryview] = []
        for chunk, data in zip(chunks, datas, strict=True):
            if len(data) != chunk.size:
                raise VerificationError(
                    f"chunk of {chunk.path!r} at {chunk.chunk_offset}: "
                    f"{len(data)} bytes, expected {chunk.size}"
                )
            lo = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            hi = min(end, chunk.chunk_offset + chunk.size) - chunk.chunk_offset
            pieces.append(data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi])
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)
