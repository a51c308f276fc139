"""lazyimage.grpcwire's client against grpcio's server (a dev dependency) on a real unix
socket: replies and statuses, deadlines the server hears about, a server that is not there
yet or restarts, limits, concurrent calls, and ``close`` during a call."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf.wrappers_pb2 import BytesValue
from hyperframe.frame import GoAwayFrame
from lazyimage.grpcwire import Channel, RpcError, StatusCode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Backend:
    """The grpcio server's methods, with events a test can hold them on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.timeouts: list[float | None] = []

    def echo(self, request: BytesValue, context: grpc.ServicerContext) -> BytesValue:
        self.timeouts.append(context.time_remaining())
        return BytesValue(value=request.value)

    def fail(self, request: BytesValue, context: grpc.ServicerContext) -> BytesValue:
        context.abort(grpc.StatusCode.NOT_FOUND, request.value.decode())

    def block(self, request: BytesValue, context: grpc.ServicerContext) -> BytesValue:
        context.add_callback(self.cancelled.set)
        self.entered.set()
        self.release.wait(30)
        return BytesValue()

    def start(self, path: Path) -> grpc.Server:
        def method(fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=BytesValue.FromString,
                response_serializer=BytesValue.SerializeToString,
            )

        server = grpc.server(
            futures.ThreadPoolExecutor(8),
            options=[("grpc.max_receive_message_length", 16 << 20)],
        )
        handlers = {
            "Echo": method(self.echo),
            "Fail": method(self.fail),
            "Block": method(self.block),
        }
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Echo", handlers)]
        )
        assert server.add_insecure_port(f"unix:{path}") != 0
        server.start()
        return server


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def running(backend: Backend, tmp_path: Path) -> Iterator[grpc.Server]:
    server = backend.start(tmp_path / "grpcio.sock")
    yield server
    backend.release.set()
    server.stop(0).wait()


def _echo(channel: Channel, value: bytes, timeout: float = 10.0) -> bytes:
    return channel.unary(
        "/test.Echo/Echo", BytesValue(value=value), BytesValue.FromString, timeout=timeout
    ).value


def _error(call: Callable[[], object]) -> RpcError:
    with pytest.raises(RpcError) as info:
        call()
    return info.value


@pytest.mark.usefixtures("running")
def test_replies_statuses_and_the_deadline_the_server_sees(
    backend: Backend, tmp_path: Path
) -> None:
    channel = Channel(tmp_path / "grpcio.sock")
    assert _echo(channel, b"hello", timeout=300) == b"hello"
    (remaining,) = backend.timeouts
    assert remaining is not None and 200 < remaining <= 300
    big = bytes(range(256)) * (4 << 12)  # 4 MiB each way, over every HTTP/2 window
    assert _echo(channel, big) == big
    failed = _error(
        lambda: channel.unary(
            "/test.Echo/Fail",
            BytesValue(value="no snapshot é 50%".encode()),
            BytesValue.FromString,
            timeout=10,
        )
    )
    assert (failed.code, failed.message) == (StatusCode.NOT_FOUND, "no snapshot é 50%")
    missing = _error(
        lambda: channel.unary("/test.Echo/Nope", BytesValue(), BytesValue.FromString, timeout=10)
    )
    assert missing.code == StatusCode.UNIMPLEMENTED
    channel.close()


@pytest.mark.usefixtures("running")
def test_a_call_past_its_deadline_is_cancelled_at_the_server(
    backend: Backend, tmp_path: Path
) -> None:
    channel = Channel(tmp_path / "grpcio.sock")
    late = _error(
        lambda: channel.unary("/test.Echo/Block", BytesValue(), BytesValue.FromString, timeout=0.5)
    )
    assert late.code == StatusCode.DEADLINE_EXCEEDED
    assert backend.cancelled.wait(10)
    backend.release.set()
    assert _echo(channel, b"next") == b"next"  # the same kept connection serves on
    channel.close()


@pytest.mark.usefixtures("running")
def test_a_reply_over_the_limit_is_refused(tmp_path: Path) -> None:
    channel = Channel(tmp_path / "grpcio.sock", max_message=1000)
    assert _echo(channel, b"x" * 900) == b"x" * 900
    refused = _error(lambda: _echo(channel, b"x" * 2000))
    assert refused.code == StatusCode.RESOURCE_EXHAUSTED
    refused = _error(lambda: _echo(channel, b"x" * 2000))  # also as a request
    assert refused.code == StatusCode.RESOURCE_EXHAUSTED
    assert _echo(channel, b"small") == b"small"
    channel.close()


def test_the_server_found_when_it_comes_and_again_after_a_restart(
    backend: Backend, tmp_path: Path
) -> None:
    path = tmp_path / "grpcio.sock"
    channel = Channel(path)
    absent = _error(lambda: _echo(channel, b"x"))
    assert absent.code == StatusCode.UNAVAILABLE
    assert f"cannot connect to {path}" in absent.message
    for round_ in range(2):  # once new, once after the kept connection's server went away
        server = backend.start(path)
        try:
            assert _echo(channel, b"round %d" % round_) == b"round %d" % round_
        finally:
            server.stop(None).wait()
    gone = _error(lambda: _echo(channel, b"x"))
    assert gone.code == StatusCode.UNAVAILABLE
    channel.close()


@pytest.mark.usefixtures("running")
def test_concurrent_calls_each_get_their_answer(backend: Backend, tmp_path: Path) -> None:
    channel = Channel(tmp_path / "grpcio.sock")
    values = [bytes([n]) * (n * 1000) for n in range(32)]
    with futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda v: _echo(channel, v), values)) == values
    channel.close()


@pytest.mark.usefixtures("running")
def test_close_ends_a_call_in_progress(backend: Backend, tmp_path: Path) -> None:
    channel = Channel(tmp_path / "grpcio.sock")
    with futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            channel.unary, "/test.Echo/Block", BytesValue(), BytesValue.FromString, timeout=30
        )
        assert backend.entered.wait(10)
        channel.close()
        error = call.exception(10)
    assert isinstance(error, RpcError) and error.code == StatusCode.CANCELLED
    assert backend.cancelled.wait(10)  # the server heard the connection go
    closed = _error(lambda: _echo(channel, b"x"))
    assert closed.code == StatusCode.CANCELLED


def _serve_raw(listener: socket.socket, answer: Callable[[int, int], str]) -> None:
    """A bare h2 server for the cases grpcio will not make on cue: for the n-th request
    (counting over all connections) on stream ``s``, ``answer(n, s)`` says what to do:
    "reply" (an empty BytesValue), "refuse" (GOAWAY naming the streams before it, and hang
    up) or "stop" (GOAWAY naming it, as a graceful stop does, then the reply and hang up)."""
    seen = 0
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return  # the test closed the listener
        # The client hanging up at any point is part of the cases.
        with sock, contextlib.suppress(OSError):
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
            )
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            hang_up = False
            while not hang_up and (data := sock.recv(65536)):
                for event in conn.receive_data(data):
                    if not isinstance(event, h2.events.StreamEnded):
                        continue
                    sid = event.stream_id
                    assert sid is not None
                    seen += 1
                    what = answer(seen, sid)
                    if what == "stop":
                        # h2 sends nothing after its own GOAWAY: write the frame by hand.
                        sock.sendall(conn.data_to_send())
                        frame = GoAwayFrame(0, last_stream_id=sid, error_code=0)
                        sock.sendall(frame.serialize())
                        hang_up = True
                    if what in ("reply", "stop"):
                        conn.send_headers(
                            sid, [(":status", "200"), ("content-type", "application/grpc")]
                        )
                        conn.send_data(sid, b"\0\0\0\0\0")
                        conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                    else:
                        conn.close_connection(last_stream_id=sid - 2)
                        hang_up = True
                sock.sendall(conn.data_to_send())


@contextlib.contextmanager
def _raw_server(path: Path, answer: Callable[[int, int], str]) -> Iterator[None]:
    """``_serve_raw`` on a unix socket at ``path`` for the block; it must end with it."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(4)
        server = threading.Thread(target=_serve_raw, args=(listener, answer), daemon=True)
        server.start()
        yield
        listener.shutdown(socket.SHUT_RDWR)
        server.join(10)
        assert not server.is_alive()


def test_a_call_the_closing_server_did_not_take_is_made_again_on_a_new_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raw.sock"
    streams: list[tuple[int, int]] = []

    def answer(n: int, sid: int) -> str:
        streams.append((n, sid))
        return "refuse" if n == 2 else "reply"  # the second, on the kept connection

    with _raw_server(path, answer):
        channel = Channel(path)
        assert _echo(channel, b"") == b""
        assert _echo(channel, b"") == b""
        channel.close()
    # Stream 3 on the first connection was refused; it went again as stream 1 of a new one.
    assert streams == [(1, 1), (2, 3), (3, 1)]


def test_a_call_the_stopping_server_named_in_its_goaway_is_answered(tmp_path: Path) -> None:
    path = tmp_path / "raw.sock"
    streams: list[tuple[int, int]] = []

    def answer(n: int, sid: int) -> str:
        streams.append((n, sid))
        return "stop" if n == 2 else "reply"

    with _raw_server(path, answer):
        channel = Channel(path)
        assert _echo(channel, b"") == b""
        assert _echo(channel, b"") == b""  # answered after the GOAWAY that named it
        assert _echo(channel, b"") == b""  # on a new connection: the old one is closing
        channel.close()
    assert streams == [(1, 1), (2, 3), (3, 1)]
