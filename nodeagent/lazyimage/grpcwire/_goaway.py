"""GOAWAY frames kept from h2 on the client side. h2 takes no frame at all once its peer has
said GOAWAY, but a gRPC server that stops gracefully says it first and then answers the
calls it named (those up to its last stream id), so the client reads it here instead."""

from __future__ import annotations

__all__ = ["GoAwayFilter"]

_HEADER = 9  # length (3), type (1), flags (1), stream id (4)
_GOAWAY = 0x7


class GoAwayFilter:
    """The frames a server sends, less its GOAWAYs, whose last stream id it keeps."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.last_stream_id: int | None = None  # the lowest any GOAWAY named
        self.error_code = 0

    def feed(self, data: bytes) -> bytes:
        """The whole frames of what came so far, GOAWAYs taken out."""
        self._buffer += data
        passed = bytearray()
        while len(self._buffer) >= _HEADER:
            end = _HEADER + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < end:
                break
            if self._buffer[3] == _GOAWAY and len(self._buffer[_HEADER:end]) >= 8:
                payload = self._buffer[_HEADER:end]
                last = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
                if self.last_stream_id is None or last < self.last_stream_id:
                    self.last_stream_id = last
                self.error_code = int.from_bytes(payload[4:8], "big")
            else:
                passed += self._buffer[:end]
            del self._buffer[:end]
        return bytes(passed)
