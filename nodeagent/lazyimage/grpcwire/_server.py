"""A gRPC server on a unix socket: HTTP/2 with prior knowledge, unary and server-streaming
methods, each call run on a thread pool.

One thread owns the listening socket and every connection, since h2's state is not
thread-safe; the pool's threads run the handlers and hand their replies back to it. Replies
go out as the client's flow-control windows allow, so a large one waits for the client
instead of piling up in the socket.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import structlog
from hyperframe.frame import GoAwayFrame

from lazyimage.grpcwire._frames import MAX_MESSAGE, MessageReader, frame
from lazyimage.grpcwire._headers import CONTENT_TYPE, decode_timeout, is_grpc_content_type
from lazyimage.grpcwire._methods import Method
from lazyimage.grpcwire._status import RpcError, StatusCode, status_headers

__all__ = ["Server"]

log = structlog.get_logger(__name__)

_READ_SIZE = 1 << 16
# How long a stopping server, its calls all answered, waits for each client to read the last
# replies and hang up, before it closes the connection itself.
_LINGER = 1.0


@dataclass(eq=False)
class _Stream:
    """One call on a connection, as the loop thread sees it."""

    stream_id: int
    path: str = ""
    method: Method | None = None
    deadline: float | None = None
    reader: MessageReader = field(default_factory=MessageReader)
    requests: list[bytes] = field(default_factory=list)
    collecting: bool = False  # reading the request
    request_ended: bool = False  # the client half-closed
    running: bool = False  # a handler has it
    cancelled: bool = False  # reset by the client, or its connection is gone
    headers_sent: bool = False
    outgoing: collections.deque[bytes] = field(default_factory=collections.deque)
    sent_of_first: int = 0  # bytes of outgoing[0] already sent
    status: tuple[StatusCode, str] | None = None


class Server:
    """Serves ``methods`` (keyed by path, ``/package.Service/Method``) on the unix socket
    ``socket_path``, which must not exist, with ``max_workers`` handler threads, once
    started. Messages over ``max_message`` bytes are refused (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        socket_path: Path,
        *,
        max_workers: int = 16,
        max_message: int = MAX_MESSAGE,
        socket_mode: int | None = None,
        thread_name: str = "grpc",
    ) -> None:
        self.socket_path = socket_path
        self._methods = dict(methods)
        self._max_message = max_message
        self._listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(str(socket_path))
            if socket_mode is not None:  # before anyone can connect
                os.chmod(socket_path, socket_mode)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name)
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        self._connections: set[_Connection] = set()
        self._stop_deadline: float | None = None
        self._idle_since: float | None = None  # stopping, and no call left
        self._stopped = threading.Event()
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, self._drain_wake)
        self._thread = threading.Thread(target=self._run, name=f"{thread_name}-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls (GOAWAY, and the socket stops accepting), let running calls
        finish for up to ``grace`` seconds, then close every connection. Blocks until done."""
        if not self._stopped.is_set():
            self.post(lambda: self._begin_stop(grace or 0.0))
            self._thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the server ended within ``timeout`` seconds."""
        return self._stopped.wait(timeout)

    def post(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread (from any thread)."""
        self._posted.append(callback)
        with contextlib.suppress(OSError):  # already woken (full), or stopped
            self._wake_writer.send(b"\0")

    # Everything below runs on the loop thread.

    def _run(self) -> None:
        try:
            while not self._finished():
                timeout = None
                if self._stop_deadline is not None:
                    timeout = max(self._stop_by() - time.monotonic(), 0.0)
                for key, mask in self._selector.select(timeout):
                    key.data(mask)
                while self._posted:
                    self._posted.popleft()()
        except Exception:
            log.exception("grpc_server_failed", socket=str(self.socket_path))
        finally:
            self._close()

    def _finished(self) -> bool:
        if self._stop_deadline is None:
            return False
        now = time.monotonic()
        if any(conn.busy() for conn in self._connections):
            return now >= self._stop_deadline
        # Every call is answered. A client whose writes failed on a closed socket could
        # lose replies it had not read yet, so each connection is half-closed and the
        # client hangs up first (they do, after a GOAWAY), for up to _LINGER.
        for conn in list(self._connections):
            conn.drain()
        if self._idle_since is None:
            self._idle_since = now
        return not self._connections or now >= self._stop_by()

    def _stop_by(self) -> float:
        """When a stopping server closes whatever is left."""
        assert self._stop_deadline is not None
        if self._idle_since is None:
            return self._stop_deadline
        return self._idle_since + _LINGER

    def _begin_stop(self, grace: float) -> None:
        if self._stop_deadline is not None:
            return
        self._stop_deadline = time.monotonic() + grace
        self._close_listener()
        for conn in list(self._connections):
            conn.go_away()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _close(self) -> None:
        self._close_listener()
        for conn in list(self._connections):
            conn.close(goodbye=True)
        # Handlers still running past the grace period finish unheard.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
        self._stopped.set()

    def _accept(self, mask: int) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors: the client sees a refused connection
            log.warning("grpc_accept_failed", socket=str(self.socket_path), error=str(exc))
            return
        sock.setblocking(False)
        conn = _Connection(self, sock)
        self._connections.add(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn.on_ready)
        conn.flush()

    def _drain_wake(self, mask: int) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _want_write(self, conn: _Connection, want: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        if self._selector.get_key(conn.sock).events != events:
            self._selector.modify(conn.sock, events, conn.on_ready)

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        self._selector.unregister(conn.sock)

    def _lookup(self, path: str) -> Method | None:
        return self._methods.get(path)

    def _dispatch(self, conn: _Connection, stream: _Stream) -> None:
        stream.running = True
        self._pool.submit(self._call, conn, stream)

    # On a pool thread.

    def _call(self, conn: _Connection, stream: _Stream) -> None:
        code, message = StatusCode.OK, ""
        try:
            # A call its client gave up on while it waited for a thread is not run.
            if stream.cancelled:
                return
            if stream.deadline is not None and time.monotonic() > stream.deadline:
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, "the deadline passed in the queue")
            assert stream.method is not None
            for reply in stream.method.handler(stream.requests[0]):
                if stream.cancelled:
                    break
                if len(reply) > self._max_message:
                    raise RpcError(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"a reply of {len(reply)} bytes, over the limit of {self._max_message}",
                    )
                self.post(functools.partial(conn.send_message, stream, frame(reply)))
        except RpcError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:
            log.exception("grpc_handler_failed", method=stream.path)
            code, message = StatusCode.UNKNOWN, f"Exception calling application: {exc}"
        finally:
            self.post(functools.partial(conn.finish, stream, code, message))


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class _Connection:
    """One client connection: h2's state, its calls, and the bytes waiting to be written."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.sock = sock
        self._server = server
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._h2.initiate_connection()
        self._streams: dict[int, _Stream] = {}
        self._outbox = bytearray()
        self._last_stream: int | None = None  # set by our GOAWAY: later streams are refused
        self._draining = False  # half-closed by a stopping server
        self._closed = False

    def busy(self) -> bool:
        """Whether a call is still running or has replies to send."""
        return any(
            s.collecting or s.running or s.outgoing or s.status for s in self._streams.values()
        )

    def on_ready(self, mask: int) -> None:
        with self.guard():
            if mask & selectors.EVENT_READ:
                self._read()
            if not self._closed:
                self.flush()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """A bug met while serving this connection costs the connection, not the server."""
        try:
            yield
        except Exception:
            log.exception("grpc_connection_failed", socket=str(self._server.socket_path))
            self.close(goodbye=False)

    def _read(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(goodbye=False)
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # Say why in a GOAWAY (h2 queued one already for most errors, not for a bad
            # preamble; a second is harmless), then hang up.
            log.warning("grpc_protocol_error", error=str(exc) or type(exc).__name__)
            self._h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.flush()
            self.close(goodbye=False)
            return
        for event in events:
            self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            self._on_request(event.stream_id, [(_text(k), _text(v)) for k, v in event.headers])
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.collecting and event.data:
                try:
                    stream.requests += stream.reader.feed(event.data)
                except RpcError as exc:
                    self.finish(stream, exc.code, exc.message)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended = True
                if stream.collecting:
                    self._on_request_complete(stream)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.cancelled = True
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in list(self._streams.values()):
                self._pump(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client said GOAWAY: h2 sends nothing more on this connection.
            self.close(goodbye=False)

    def _on_request(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        fields = dict(headers)
        stream = _Stream(stream_id, path=fields.get(":path", ""))
        self._streams[stream_id] = stream
        if self._last_stream is not None and stream_id > self._last_stream:
            self._streams.pop(stream_id)
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if fields.get(":method") != "POST":
            self._refuse_http(stream, 405)
            return
        if not is_grpc_content_type(fields.get("content-type", "")):
            self._refuse_http(stream, 415)
            return
        encoding = fields.get("grpc-encoding", "identity")
        if encoding != "identity":
            message = f"grpc-encoding {encoding} is not supported (only identity)"
            self.finish(stream, StatusCode.UNIMPLEMENTED, message)
            return
        stream.method = self._server._lookup(stream.path)
        if stream.method is None:
            self.finish(stream, StatusCode.UNIMPLEMENTED, f"unknown method {stream.path}")
            return
        if "grpc-timeout" in fields:
            try:
                stream.deadline = time.monotonic() + decode_timeout(fields["grpc-timeout"])
            except ValueError as exc:
                self.finish(stream, StatusCode.INTERNAL, str(exc))
                return
        stream.reader = MessageReader(self._server._max_message)
        stream.collecting = True

    def _on_request_complete(self, stream: _Stream) -> None:
        stream.collecting = False
        try:
            stream.reader.finish()
        except RpcError as exc:
            self.finish(stream, exc.code, exc.message)
            return
        if len(stream.requests) != 1:
            message = (
                f"{stream.path} takes one request message, the call sent {len(stream.requests)}"
            )
            self.finish(stream, StatusCode.INTERNAL, message)
            return
        self._server._dispatch(self, stream)

    def _refuse_http(self, stream: _Stream, status: int) -> None:
        self._h2.send_headers(stream.stream_id, [(":status", str(status))], end_stream=True)
        self._end(stream)

    def send_message(self, stream: _Stream, framed: bytes) -> None:
        if not stream.cancelled:
            stream.outgoing.append(framed)
            with self.guard():
                self._pump(stream)
                self.flush()

    def finish(self, stream: _Stream, code: StatusCode, message: str) -> None:
        stream.running = stream.collecting = False
        if not stream.cancelled:
            stream.status = (code, message)
            with self.guard():
                self._pump(stream)
                self.flush()

    def _pump(self, stream: _Stream) -> None:
        """Send what of ``stream``'s replies the windows allow, then its status."""
        if stream.cancelled or self._closed:
            return
        sid = stream.stream_id
        try:
            if stream.outgoing and not stream.headers_sent:
                self._h2.send_headers(sid, [(":status", "200"), ("content-type", CONTENT_TYPE)])
                stream.headers_sent = True
            while stream.outgoing:
                window = min(
                    self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size
                )
                if window <= 0:
                    return
                first = stream.outgoing[0]
                chunk = first[stream.sent_of_first : stream.sent_of_first + window]
                self._h2.send_data(sid, chunk)
                stream.sent_of_first += len(chunk)
                if stream.sent_of_first == len(first):
                    stream.outgoing.popleft()
                    stream.sent_of_first = 0
            if stream.status is not None:
                trailers = status_headers(*stream.status)
                if not stream.headers_sent:  # trailers-only
                    trailers = [(":status", "200"), ("content-type", CONTENT_TYPE), *trailers]
                self._h2.send_headers(sid, trailers, end_stream=True)
                self._end(stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The client reset the stream or went away meanwhile: nobody to answer.
            stream.cancelled = True
            self._streams.pop(sid, None)

    def _end(self, stream: _Stream) -> None:
        self._streams.pop(stream.stream_id, None)
        stream.status = None
        if not stream.request_ended:
            # Answered before the request ended (refused, too large): tell the client to
            # stop sending it. h2 may know the end came already, in the same read.
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def go_away(self) -> None:
        """Tell the client that no new call will be taken; running ones go on. Written as
        a raw frame, since h2's own GOAWAY would stop this side from sending their replies."""
        self._last_stream = self._h2.highest_inbound_stream_id
        goaway = GoAwayFrame(0, last_stream_id=self._last_stream, error_code=0)
        self.flush()
        self._outbox += goaway.serialize()
        self.flush()

    def drain(self) -> None:
        """Half-close once everything is written: the client reads it all, then hangs up."""
        if self._draining or self._closed or self._outbox:
            return
        self._draining = True
        self._server._want_write(self, False)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def flush(self) -> None:
        if self._closed:
            return
        if self._draining:
            self._h2.data_to_send()  # nothing more can be written (acks of late frames)
            return
        self._outbox += self._h2.data_to_send()
        while self._outbox:
            try:
                sent = self.sock.send(self._outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(goodbye=False)
                return
            del self._outbox[:sent]
        self._server._want_write(self, bool(self._outbox))

    def close(self, *, goodbye: bool) -> None:
        if self._closed:
            return
        if goodbye:
            try:
                self._h2.close_connection()
                self._outbox += self._h2.data_to_send()
                self.sock.send(self._outbox)  # best effort: the peer may be gone
            except (OSError, h2.exceptions.ProtocolError):
                pass
        self._closed = True
        for stream in self._streams.values():
            stream.cancelled = True
        self._streams.clear()
        self._server._forget(self)
        self.sock.close()
