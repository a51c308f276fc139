"""gRPC's message framing on an HTTP/2 stream: each message is a 1-byte compressed flag, a
4-byte big-endian length and the message. Compression is never negotiated here, so a
compressed message is a protocol error."""

from __future__ import annotations

import struct
from typing import Protocol

from lazyimage.grpcwire._status import RpcError, StatusCode

__all__ = ["MAX_MESSAGE", "Message", "MessageReader", "frame"]

# What containerd's own gRPC clients and servers allow (16 MiB).
MAX_MESSAGE = 16 << 20

_PREFIX = struct.Struct(">BI")


class Message(Protocol):
    """What is sent: a protobuf message, or anything that serializes the same way."""

    def SerializeToString(self) -> bytes: ...


def frame(message: bytes) -> bytes:
    """``message`` with its 5-byte prefix."""
    return _PREFIX.pack(0, len(message)) + message


class MessageReader:
    """Splits a stream's DATA into messages, refusing one longer than ``limit`` as soon as
    its prefix arrives (nothing of it is kept)."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages ``data`` completes; raises RpcError (RESOURCE_EXHAUSTED for one too
        long, INTERNAL for a compressed one) on the first bad prefix."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _PREFIX.size:
            flag, length = _PREFIX.unpack_from(self._buffer)
            if flag == 1:
                raise RpcError(
                    StatusCode.INTERNAL, "a compressed message, but no compression was agreed"
                )
            if flag != 0:
                raise RpcError(StatusCode.INTERNAL, f"a message prefix with flag {flag}")
            if length > self._limit:
                raise RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"a message of {length} bytes, over the limit of {self._limit}",
                )
            end = _PREFIX.size + length
            if len(self._buffer) < end:
                break
            messages.append(bytes(self._buffer[_PREFIX.size : end]))
            del self._buffer[:end]
        return messages

    def finish(self) -> None:
        """The stream ended: raises RpcError (INTERNAL) if a message was cut short."""
        if self._buffer:
            raise RpcError(
                StatusCode.INTERNAL,
                f"the stream ended inside a message ({len(self._buffer)} bytes of it)",
            )
