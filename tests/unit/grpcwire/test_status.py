"""Status codes, the grpc-status/grpc-message trailers and their percent-encoding, and the
mapping of HTTP statuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lazyimage.grpcwire import RpcError, StatusCode
from lazyimage.grpcwire._status import parse_status, status_from_http, status_headers

pytestmark = pytest.mark.timeout(60)


def test_codes_are_grpcs() -> None:
    grpc = pytest.importorskip("grpc")  # a dev dependency, the reference for the numbers
    assert {c.name: c.value for c in StatusCode} == {c.name: c.value[0] for c in grpc.StatusCode}


def test_trailers_encode_the_message() -> None:
    assert status_headers(StatusCode.OK, "") == [("grpc-status", "0")]
    assert status_headers(StatusCode.NOT_FOUND, "snapshot a/b: 100% gone\n ü") == [
        ("grpc-status", "5"),
        ("grpc-message", "snapshot a/b: 100%25 gone%0A %C3%BC"),
    ]


@given(code=st.sampled_from(StatusCode), message=st.text(max_size=200))
def test_trailers_round_trip(code: StatusCode, message: str) -> None:
    headers = status_headers(code, message)
    assert all(v.isascii() and v.isprintable() for _, v in headers)
    assert parse_status(headers) == (code, message)


def test_reading_a_status() -> None:
    assert parse_status([("grpc-status", "9"), ("grpc-message", "busy")]) == (
        StatusCode.FAILED_PRECONDITION,
        "busy",
    )
    # A bad escape is kept as it came.
    assert parse_status([("grpc-status", "2"), ("grpc-message", "50%zz %4")]) == (
        StatusCode.UNKNOWN,
        "50%zz %4",
    )
    assert parse_status([("grpc-status", "99")]) == (StatusCode.UNKNOWN, "")
    missing = parse_status([("content-type", "application/grpc")])
    assert missing[0] == StatusCode.INTERNAL and "without a grpc-status" in missing[1]
    assert parse_status([("grpc-status", "x1")])[0] == StatusCode.INTERNAL


def test_http_statuses_map_as_the_protocol_says() -> None:
    assert status_from_http(400) == StatusCode.INTERNAL
    assert status_from_http(401) == StatusCode.UNAUTHENTICATED
    assert status_from_http(403) == StatusCode.PERMISSION_DENIED
    assert status_from_http(404) == StatusCode.UNIMPLEMENTED
    assert {status_from_http(s) for s in (429, 502, 503, 504)} == {StatusCode.UNAVAILABLE}
    assert status_from_http(415) == StatusCode.UNKNOWN


def test_rpc_error_says_code_and_message() -> None:
    error = RpcError(StatusCode.ALREADY_EXISTS, "key k")
    assert str(error) == "ALREADY_EXISTS: key k"
    assert (error.code, error.message) == (StatusCode.ALREADY_EXISTS, "key k")
