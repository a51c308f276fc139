"""A gRPC client of unary methods on a unix socket: HTTP/2 with prior knowledge, a deadline
sent as ``grpc-timeout``, blocking calls from any thread.

Connections are made when a call needs one and kept for the next call; a kept connection
the server has closed meanwhile (the server restarted) is replaced, so a restart costs no
call that had not started. Calls made at the same time each get their own connection.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from lazyimage.grpcwire._frames import MAX_MESSAGE, Message, MessageReader, frame
from lazyimage.grpcwire._goaway import GoAwayFilter
from lazyimage.grpcwire._headers import CONTENT_TYPE, encode_timeout, is_grpc_content_type
from lazyimage.grpcwire._status import RpcError, StatusCode, parse_status, status_from_http

__all__ = ["Channel"]

_Reply = TypeVar("_Reply")
_READ_SIZE = 1 << 16
_USER_AGENT = "lazyimage-grpcwire"
# What an RST_STREAM from the server means for the call.
_RESET_CODES: dict[int, StatusCode] = {
    h2.errors.ErrorCodes.CANCEL: StatusCode.CANCELLED,
    h2.errors.ErrorCodes.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}


class _Unprocessed(Exception):
    """The server refused the call before it started: it is safe to make again."""


class Channel:
    """Calls to the gRPC server on ``socket_path``. ``close`` ends the calls in progress
    (CANCELLED) and the kept connections."""

    def __init__(
        self, socket_path: Path, *, max_message: int = MAX_MESSAGE, authority: str = "localhost"
    ) -> None:
        self.socket_path = socket_path
        self._max_message = max_message
        self._authority = authority
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    def unary(
        self, path: str, request: Message, parse: Callable[[bytes], _Reply], *, timeout: float
    ) -> _Reply:
        """Call the method ``path`` (``/package.Service/Method``) with ``request``; its reply
        read by ``parse``. Raises RpcError with the server's status, DEADLINE_EXCEEDED after
        ``timeout`` seconds, UNAVAILABLE when the server cannot be reached."""
        deadline = time.monotonic() + timeout
        data = request.SerializeToString()
        if len(data) > self._max_message:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {len(data)} bytes, over the limit of {self._max_message}",
            )
        reply = self._call(path, data, deadline)
        try:
            return parse(reply)
        except Exception as exc:  # the parser's own errors (protobuf's DecodeError, ...)
            raise RpcError(StatusCode.INTERNAL, f"cannot parse the reply: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [*self._idle, *self._busy]
            self._idle.clear()
        for conn in connections:
            conn.abort()

    def _call(self, path: str, data: bytes, deadline: float) -> bytes:
        conn, reused = self._take(deadline)
        try:
            return conn.call(path, self._authority, data, deadline, self._max_message)
        except _Unprocessed as exc:
            if not reused:
                raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
        finally:
            self._give(conn)
        # A kept connection the server was closing when the call went out: once more on
        # a new one.
        conn, _ = self._take(deadline, fresh=True)
        try:
            return conn.call(path, self._authority, data, deadline, self._max_message)
        except _Unprocessed as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
        finally:
            self._give(conn)

    def _take(self, deadline: float, *, fresh: bool = False) -> tuple[_Connection, bool]:
        with self._lock:
            if self._closed:
                raise RpcError(StatusCode.CANCELLED, "the channel is closed")
            kept = [] if fresh else self._idle
            while kept:
                conn = kept.pop()
                if conn.alive():
                    self._busy.add(conn)
                    return conn, True
                conn.abort()
        conn = _Connection.connect(self.socket_path, deadline)
        with self._lock:
            if self._closed:
                conn.abort()
                raise RpcError(StatusCode.CANCELLED, "the channel is closed")
            self._busy.add(conn)
        return conn, False

    def _give(self, conn: _Connection) -> None:
        with self._lock:
            self._busy.discard(conn)
            if conn.usable and not self._closed:
                self._idle.append(conn)
                return
        conn.abort()


@dataclass
class _Answer:
    """What has come back for one call."""

    reader: MessageReader
    messages: list[bytes] = field(default_factory=list)
    sent: bool = False  # the whole request, END_STREAM included
    http_status: str = ""
    content_type: str = ""
    status: tuple[StatusCode, str] | None = None
    ended: bool = False


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class _Connection:
    """One HTTP/2 connection, used by one call at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._goaway = GoAwayFilter()
        self.usable = True
        self._aborted = False

    @classmethod
    def connect(cls, path: Path, deadline: float) -> _Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            reason = exc.strerror or type(exc).__name__
            raise RpcError(StatusCode.UNAVAILABLE, f"cannot connect to {path}: {reason}") from None
        conn = cls(sock)
        conn._h2.initiate_connection()
        return conn

    def alive(self) -> bool:
        """Whether the server still has this connection open, as far as it has said:
        reads what it sent while the connection was idle (a GOAWAY, a PING, the end)."""
        try:
            while select.select([self._sock], [], [], 0)[0]:
                self._sock.settimeout(0.0)
                data = self._sock.recv(_READ_SIZE)
                if not data:
                    return False
                self._h2.receive_data(self._goaway.feed(data))
                if self._goaway.last_stream_id is not None:
                    return False
            self._flush()
        except (OSError, h2.exceptions.ProtocolError, ValueError):
            return False
        return True

    def abort(self) -> None:
        """Close the socket, waking a call blocked on it."""
        self.usable = False
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def call(
        self, path: str, authority: str, data: bytes, deadline: float, max_message: int
    ) -> bytes:
        answer = _Answer(MessageReader(max_message))
        stream_id = 0
        try:
            stream_id = self._h2.get_next_available_stream_id()
            self._h2.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", path),
                    (":authority", authority),
                    ("content-type", CONTENT_TYPE),
                    ("te", "trailers"),
                    ("grpc-timeout", encode_timeout(deadline - time.monotonic())),
                    ("user-agent", _USER_AGENT),
                ],
            )
            self._send_body(stream_id, frame(data), deadline, answer)
            while not answer.ended:
                self._receive(stream_id, deadline, answer)
        except TimeoutError:
            self._cancel(stream_id)
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "the deadline passed") from None
        except RpcError:
            if self._aborted:
                raise RpcError(StatusCode.CANCELLED, "the channel was closed") from None
            self._cancel(stream_id)
            raise
        except h2.exceptions.ProtocolError as exc:
            self.usable = False
            raise RpcError(StatusCode.INTERNAL, f"HTTP/2 protocol error: {exc}") from None
        except OSError as exc:
            self.usable = False
            if self._aborted:
                raise RpcError(StatusCode.CANCELLED, "the channel was closed") from None
            reason = exc.strerror or type(exc).__name__
            if not answer.sent:
                # The server cannot have started a call whose request it never got whole.
                raise _Unprocessed(f"connection lost before the call was sent: {reason}") from None
            raise RpcError(StatusCode.UNAVAILABLE, f"connection lost: {reason}") from None
        return self._result(answer)

    def _send_body(self, stream_id: int, body: bytes, deadline: float, answer: _Answer) -> None:
        offset = 0
        while offset < len(body):
            window = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size
            )
            if window <= 0:
                self._flush()
                self._receive(stream_id, deadline, answer)  # until the server opens the window
                if answer.ended:
                    self._cancel(stream_id)  # answered before it read it all (refused)
                    return
                continue
            self._h2.send_data(stream_id, body[offset : offset + window])
            offset += window
        self._h2.end_stream(stream_id)
        self._flush()
        answer.sent = True

    def _receive(self, stream_id: int, deadline: float, answer: _Answer) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        data = self._sock.recv(_READ_SIZE)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
        for event in self._h2.receive_data(self._goaway.feed(data)):
            self._on_event(stream_id, event, answer)
        self._flush()
        last = self._goaway.last_stream_id
        if last is not None:
            # No new call goes on this connection; this one goes on if the server named it.
            self.usable = False
            if last < stream_id and not answer.ended:
                raise _Unprocessed("the server was shutting down (GOAWAY)")

    def _on_event(self, stream_id: int, event: h2.events.Event, answer: _Answer) -> None:
        if getattr(event, "stream_id", None) != stream_id:
            return
        if isinstance(event, h2.events.ResponseReceived):
            assert event.headers is not None
            headers = [(_text(k), _text(v)) for k, v in event.headers]
            fields = dict(headers)
            answer.http_status = fields.get(":status", "")
            answer.content_type = fields.get("content-type", "")
            if "grpc-status" in fields:  # trailers-only
                answer.status = parse_status(headers)
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            answer.messages += answer.reader.feed(event.data or b"")
        elif isinstance(event, h2.events.TrailersReceived):
            assert event.headers is not None
            answer.status = parse_status((_text(k), _text(v)) for k, v in event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            answer.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if answer.status is not None and event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                answer.ended = True  # a server's "stop sending" after its answer
                return
            answer.ended = True
            code = _RESET_CODES.get(event.error_code or 0, StatusCode.INTERNAL)
            raise RpcError(code, f"the server reset the call ({event.error_code!s})")

    def _result(self, answer: _Answer) -> bytes:
        if answer.http_status != "200":
            code = status_from_http(int(answer.http_status or 0))
            raise RpcError(code, f"the server answered HTTP {answer.http_status}")
        if not is_grpc_content_type(answer.content_type):
            raise RpcError(StatusCode.INTERNAL, f"a reply of type {answer.content_type!r}")
        answer.reader.finish()
        if answer.status is None:
            code, message = parse_status(())
            raise RpcError(code, message)
        code, message = answer.status
        if code != StatusCode.OK:
            raise RpcError(code, message)
        if len(answer.messages) != 1:
            raise RpcError(
                StatusCode.INTERNAL, f"a unary call answered with {len(answer.messages)} messages"
            )
        return answer.messages[0]

    def _cancel(self, stream_id: int) -> None:
        if not stream_id or not self.usable:
            return
        try:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self._flush()
        except h2.exceptions.StreamClosedError:
            pass  # already over
        except (OSError, h2.exceptions.ProtocolError):
            self.usable = False

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._sock.sendall(data)
