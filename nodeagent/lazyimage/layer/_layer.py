"""A mounted layer: its tree, file reads through a chunk reader, and the access recorder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from lazyimage.errors import VerificationError
from lazyimage.estargz import Chunk
from lazyimage.layer._recorder import AccessRecorder
from lazyimage.layer._tree import LayerTree

__all__ = ["ReadChunks", "ReadSlice", "RemoteLayer"]

# Verified, uncompressed bytes of each chunk, in order: ``fetcher.read(chunks, priority)``
# with the priority bound by the caller.
ReadChunks = Callable[[Sequence[Chunk]], Awaitable[list[bytes]]]
# Verified bytes ``[start, start+length)`` of one chunk: ``fetcher.read_slice``. Lets a read
# inside one cached chunk skip loading the whole chunk.
ReadSlice = Callable[[Chunk, int, int], Awaitable[bytes]]


class RemoteLayer:
    """One layer's files, read lazily. Failures of ``read_chunks`` propagate unchanged.

    The reader is trusted to return verified chunk bytes; this class only slices them, and
    refuses a chunk of the wrong length rather than serve misplaced bytes.
    """

    def __init__(
        self,
        tree: LayerTree,
        read_chunks: ReadChunks,
        recorder: AccessRecorder | None = None,
        read_slice: ReadSlice | None = None,
    ) -> None:
        self.tree = tree
        self.recorder = recorder if recorder is not None else AccessRecorder()
        self._read_chunks = read_chunks
        self._read_slice = read_slice

    async def read(self, node_id: int, offset: int, size: int) -> bytes:
        """File bytes ``[offset, offset+size)``: exactly ``size`` of them unless EOF is nearer."""
        end = min(offset + size, self.tree.size(node_id))
        if offset >= end:
            return b""
        if node_id not in self.recorder:
            self.recorder.record(node_id, self.tree.path(node_id))
        chunks = self.tree.chunks_for(node_id, offset, end - offset)
        if len(chunks) == 1 and self._read_slice is not None:
            chunk = chunks[0]
            data = await self._read_slice(chunk, offset - chunk.chunk_offset, end - offset)
            if len(data) != end - offset:
                raise VerificationError(
                    f"chunk of {chunk.path!r} at {chunk.chunk_offset}: "
                    f"{len(data)} bytes for a read of {end - offset}"
                )
            return data
        datas = await self._read_chunks(chunks)
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
