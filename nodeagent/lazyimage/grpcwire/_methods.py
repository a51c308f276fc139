"""A server's methods: how a handler turns a request's bytes into its replies' bytes, and the
two shapes the server offers (unary, server-streaming) over protobuf-like messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from lazyimage.grpcwire._frames import Message
from lazyimage.grpcwire._status import RpcError, StatusCode

__all__ = ["Method", "server_streaming", "unary"]

_Request = TypeVar("_Request")


@dataclass(frozen=True)
class Method:
    """A method's handler, from the request's bytes to the replies' bytes; a unary
    method's yields exactly one."""

    handler: Callable[[bytes], Iterable[bytes]]


def _parse(parse: Callable[[bytes], _Request], data: bytes) -> _Request:
    try:
        return parse(data)
    except Exception as exc:  # the parser's own errors (protobuf's DecodeError, ...)
        raise RpcError(StatusCode.INTERNAL, f"cannot parse the request: {exc}") from None


def unary(parse: Callable[[bytes], _Request], call: Callable[[_Request], Message]) -> Method:
    """A method with one reply: ``call(parse(request))``."""

    def handler(data: bytes) -> Iterator[bytes]:
        yield call(_parse(parse, data)).SerializeToString()

    return Method(handler)


def server_streaming(
    parse: Callable[[bytes], _Request], call: Callable[[_Request], Iterable[Message]]
) -> Method:
    """A method with a stream of replies: those of ``call(parse(request))``."""

    def handler(data: bytes) -> Iterator[bytes]:
        for reply in call(_parse(parse, data)):
            yield reply.SerializeToString()

    return Method(handler)
