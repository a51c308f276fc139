"""gRPC status codes, the error that carries one, and the ``grpc-status``/``grpc-message``
trailers (the message percent-encoded as the gRPC HTTP/2 protocol requires)."""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["RpcError", "StatusCode", "parse_status", "status_from_http", "status_headers"]


class StatusCode(enum.IntEnum):
    """The codes of ``google.rpc.Code``, named as every gRPC library names them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call that ended with a status other than OK. A server handler raises it to answer
    with that status; a client call raises it when the server (or the transport) did."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


# The bytes grpc-message may carry unencoded: printable ASCII except the escape itself.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _encode_message(message: str) -> str:
    return "".join(
        chr(byte) if byte in _PLAIN else f"%{byte:02X}" for byte in message.encode("utf-8")
    )


def _decode_message(value: str) -> str:
    # Invalid escapes are kept as they are, as the protocol asks of a receiver.
    raw = value.encode("ascii", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        escape = raw[i : i + 3]
        if raw[i] == ord("%") and len(escape) == 3:
            try:
                out.append(int(escape[1:], 16))
            except ValueError:
                pass
            else:
                i += 3
                continue
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "replace")


def status_headers(code: StatusCode, message: str) -> list[tuple[str, str]]:
    """The trailers that end a call with ``code``."""
    headers = [("grpc-status", str(int(code)))]
    if message:
        headers.append(("grpc-message", _encode_message(message)))
    return headers


def parse_status(headers: Iterable[tuple[str, str]]) -> tuple[StatusCode, str]:
    """The status in a call's trailers; INTERNAL when there is none or it is not a number
    (an unknown number is UNKNOWN, as gRPC's clients read it)."""
    fields = dict(headers)
    raw = fields.get("grpc-status")
    if raw is None:
        return StatusCode.INTERNAL, "the server ended the call without a grpc-status"
    if not raw.isdigit():
        return StatusCode.INTERNAL, f"malformed grpc-status {raw!r}"
    message = _decode_message(fields.get("grpc-message", ""))
    try:
        return StatusCode(int(raw)), message
    except ValueError:
        return StatusCode.UNKNOWN, message


# The gRPC protocol's mapping of an HTTP status that is not 200 to a call's status.
_HTTP_CODES = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def status_from_http(http_status: int) -> StatusCode:
    """The status of a call whose response was not HTTP 200."""
    return _HTTP_CODES.get(http_status, StatusCode.UNKNOWN)
