"""lazyimage.grpcwire's server driven by grpcio's client (a dev dependency) on a real unix
socket: replies bigger than the flow-control windows, streams, limits, errors, calls that
block while others go on, a stop with a call in flight, and bad clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, UInt32Value
from lazyimage.grpcwire import MAX_MESSAGE, RpcError, Server, StatusCode, server_streaming, unary
from lazyimage.grpcwire._goaway import GoAwayFilter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_16MIB_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", -1),  # let the client send what the server refuses
]


class Echo:
    """The methods under test, with events a test can hold them on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.echoed: list[bytes] = []

    def echo(self, request: BytesValue) -> BytesValue:
        self.echoed.append(request.value)
        return BytesValue(value=request.value)

    def block(self, request: BytesValue) -> BytesValue:
        self.entered.set()
        assert self.release.wait(30)
        return BytesValue(value=b"released")

    def fail(self, request: BytesValue) -> BytesValue:
        if request.value == b"status":
            raise RpcError(StatusCode.FAILED_PRECONDITION, "has children: 100% ü")
        raise RuntimeError("a bug")

    def many(self, request: UInt32Value) -> Iterator[BytesValue]:
        for n in range(request.value):
            yield BytesValue(value=n.to_bytes(4, "big") * (16 << 10))  # 64 KiB each

    def server(self, path: Path, max_workers: int = 16) -> Server:
        return Server(
            {
                "/test.Echo/Echo": unary(BytesValue.FromString, self.echo),
                "/test.Echo/Block": unary(BytesValue.FromString, self.block),
                "/test.Echo/Fail": unary(BytesValue.FromString, self.fail),
                "/test.Echo/Many": server_streaming(UInt32Value.FromString, self.many),
            },
            path,
            max_workers=max_workers,
        )


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def served(echo: Echo, tmp_path: Path) -> Iterator[tuple[grpc.Channel, Server]]:
    server = echo.server(tmp_path / "echo.sock")
    server.start()
    try:
        with grpc.insecure_channel(
            f"unix://{tmp_path / 'echo.sock'}", options=_16MIB_OPTIONS
        ) as channel:
            yield channel, server
    finally:
        echo.release.set()
        server.stop(0)


def _unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/test.Echo/{method}",
        request_serializer=BytesValue.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        assert callable(call)
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def test_replies_larger_than_the_windows_come_back_whole(
    served: tuple[grpc.Channel, Server],
) -> None:
    channel, _ = served
    big = bytes(range(256)) * (15 << 12)  # 15 MiB, far over HTTP/2's 64 KiB first window
    assert _unary(channel, "Echo")(BytesValue(value=big)).value == big
    many = channel.unary_stream(
        "/test.Echo/Many",
        request_serializer=UInt32Value.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )
    replies = [r.value for r in many(UInt32Value(value=300))]  # 19 MiB in all
    assert len(replies) == 300
    assert all(r == n.to_bytes(4, "big") * (16 << 10) for n, r in enumerate(replies))
    assert list(many(UInt32Value(value=0))) == []


def test_a_message_over_16_mib_is_refused_and_the_connection_goes_on(
    served: tuple[grpc.Channel, Server],
) -> None:
    channel, _ = served
    over = BytesValue(value=b"x" * MAX_MESSAGE)  # 16 MiB of value, and its field header
    code, details = _code(lambda: _unary(channel, "Echo")(over))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over the limit of {MAX_MESSAGE}" in details
    assert _unary(channel, "Echo")(BytesValue(value=b"after")).value == b"after"


def test_errors_map_to_their_status(served: tuple[grpc.Channel, Server]) -> None:
    channel, _ = served
    assert _code(lambda: _unary(channel, "Fail")(BytesValue(value=b"status"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "has children: 100% ü",
    )
    code, details = _code(lambda: _unary(channel, "Fail")(BytesValue(value=b"bug")))
    assert (code, details) == (grpc.StatusCode.UNKNOWN, "Exception calling application: a bug")
    assert _code(lambda: _unary(channel, "Nope")(BytesValue())) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "unknown method /test.Echo/Nope",
    )
    raw = channel.unary_unary("/test.Echo/Echo")  # bytes as they are, here not protobuf
    code, details = _code(lambda: raw(b"\x0a\xff\xff"))
    assert code == grpc.StatusCode.INTERNAL and "cannot parse the request" in details
    assert _unary(channel, "Echo")(BytesValue(value=b"still here")).value == b"still here"


def test_a_blocked_call_holds_up_no_other(echo: Echo, served: tuple[grpc.Channel, Server]) -> None:
    channel, _ = served
    blocked = _unary(channel, "Block").future(BytesValue())
    assert echo.entered.wait(10)
    with ThreadPoolExecutor(8) as pool:
        values = [bytes([n]) * 1000 for n in range(40)]
        replies = list(pool.map(lambda v: _unary(channel, "Echo")(BytesValue(value=v)), values))
    assert [r.value for r in replies] == values
    assert not blocked.done()
    echo.release.set()
    assert blocked.result(10).value == b"released"


def test_a_call_whose_deadline_passed_while_it_waited_for_a_thread_is_not_run(
    echo: Echo, tmp_path: Path
) -> None:
    server = echo.server(tmp_path / "one.sock", max_workers=1)
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{tmp_path / 'one.sock'}") as channel:
            blocked = _unary(channel, "Block").future(BytesValue())
            assert echo.entered.wait(10)
            started = time.monotonic()
            late = _code(lambda: _unary(channel, "Echo")(BytesValue(value=b"late"), timeout=0.3))
            assert late[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            # Past the deadline as the server counts it too (from when the call reached it).
            time.sleep(max(0.0, started + 0.6 - time.monotonic()))
            echo.release.set()
            assert blocked.result(10).value == b"released"
            assert _unary(channel, "Echo")(BytesValue(value=b"next")).value == b"next"
        assert echo.echoed == [b"next"]
    finally:
        echo.release.set()
        server.stop(0)


def _refuses_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return True
    return False


def test_stop_lets_a_running_call_finish_and_takes_no_new_one(
    echo: Echo, served: tuple[grpc.Channel, Server], tmp_path: Path
) -> None:
    channel, server = served
    blocked = _unary(channel, "Block").future(BytesValue())
    assert echo.entered.wait(10)
    stopping = threading.Thread(target=server.stop, args=(30.0,))
    stopping.start()
    while not _refuses_connections(tmp_path / "echo.sock"):
        time.sleep(0.01)
    with grpc.insecure_channel(f"unix://{tmp_path / 'echo.sock'}") as late:
        code, _ = _code(lambda: _unary(late, "Echo")(BytesValue(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert stopping.is_alive() and not blocked.done()
    echo.release.set()
    assert blocked.result(10).value == b"released"
    stopping.join(10)
    assert not stopping.is_alive()
    assert server.wait(0)


def test_stop_ends_a_call_that_outlives_the_grace(
    echo: Echo, served: tuple[grpc.Channel, Server]
) -> None:
    channel, server = served
    blocked = _unary(channel, "Block").future(BytesValue())
    assert echo.entered.wait(10)
    server.stop(0.1)
    assert server.wait(0)
    error = blocked.exception(10)
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_speaks_no_http2_loses_only_its_own_connection(
    served: tuple[grpc.Channel, Server], tmp_path: Path
) -> None:
    channel, _ = served
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(tmp_path / "echo.sock"))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    # It ends on a GOAWAY: 8 bytes, type 7, stream 0; last stream 0, PROTOCOL_ERROR.
    assert received.endswith(bytes.fromhex("000008 07 00 00000000 00000000 00000001"))
    assert _unary(channel, "Echo")(BytesValue(value=b"ok")).value == b"ok"


def _raw_request(path: Path, headers: list[tuple[str, str]]) -> dict[str, str]:
    """One request's headers by plain h2; the response's headers (trailers-only or not)."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the server hung up without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return {str(k): str(v) for k, v in event.headers or []}
            sock.sendall(conn.data_to_send())


def test_http_that_is_not_grpc_is_refused_as_the_protocol_says(
    served: tuple[grpc.Channel, Server], tmp_path: Path
) -> None:
    base = [(":method", "POST"), (":scheme", "http"), (":authority", "localhost")]
    path = [(":path", "/test.Echo/Echo")]
    answer = _raw_request(tmp_path / "echo.sock", [*base, *path, ("content-type", "text/plain")])
    assert answer[":status"] == "415"
    get = [(":method", "GET"), *base[1:], *path]
    assert _raw_request(tmp_path / "echo.sock", get)[":status"] == "405"
    gzip = [*base, *path, ("content-type", "application/grpc"), ("grpc-encoding", "gzip")]
    answer = _raw_request(tmp_path / "echo.sock", gzip)
    assert (answer[":status"], answer["grpc-status"]) == ("200", str(StatusCode.UNIMPLEMENTED))
    assert "grpc-encoding gzip is not supported" in answer["grpc-message"]


def test_a_stopping_server_lets_the_client_read_its_reply_and_hang_up_first(
    echo: Echo, served: tuple[grpc.Channel, Server], tmp_path: Path
) -> None:
    _, server = served
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    headers = [
        *((":method", "POST"), (":scheme", "http"), (":authority", "localhost")),
        *((":path", "/test.Echo/Block"), ("content-type", "application/grpc")),
    ]
    conn.send_headers(1, headers)
    conn.send_data(1, b"\0\0\0\0\0", end_stream=True)
    goaway = GoAwayFilter()  # the server says GOAWAY before the reply: h2 would stop there
    stopping = threading.Thread(target=server.stop, args=(30.0,))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(tmp_path / "echo.sock"))
        sock.sendall(conn.data_to_send())
        assert echo.entered.wait(10)
        stopping.start()
        echo.release.set()
        trailers: dict[str, str] = {}
        while not trailers:
            data = sock.recv(65536)
            assert data, "the server hung up before the reply was read"
            for event in conn.receive_data(goaway.feed(data)):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = {str(k): str(v) for k, v in event.headers or []}
        assert trailers["grpc-status"] == "0"
        assert goaway.last_stream_id == 1
        # The client still writes after the last reply (acks, a PING): no broken pipe.
        conn.ping(b"12345678")
        sock.sendall(conn.data_to_send())
        while sock.recv(65536):  # up to the server's half-close
            pass
        assert stopping.is_alive()  # the connection is the client's to end
    stopping.join(10)
    assert not stopping.is_alive() and server.wait(0)
