"""grpc-timeout in both directions, and which content types are gRPC's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lazyimage.grpcwire._headers import decode_timeout, encode_timeout, is_grpc_content_type

pytestmark = pytest.mark.timeout(60)


def test_timeouts_use_the_finest_unit_that_fits_eight_digits() -> None:
    assert encode_timeout(0) == "0n"
    assert encode_timeout(0.05) == "50000000n"
    assert encode_timeout(30) == "30000000u"
    assert encode_timeout(900) == "900000m"
    assert encode_timeout(10**9) == "16666667M"
    assert encode_timeout(-1) == "0n"


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_a_timeout_never_shrinks_on_the_wire(seconds: float) -> None:
    encoded = encode_timeout(seconds)
    assert len(encoded) <= 9
    decoded = decode_timeout(encoded)
    assert decoded >= seconds * (1 - 1e-12)
    assert decoded <= seconds * 1.001 + 1e-6


@pytest.mark.parametrize("value", ["", "10", "1s", "123456789S", "1.5S", "-1S", "1 S"])
def test_malformed_timeouts_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="malformed grpc-timeout"):
        decode_timeout(value)


def test_grpc_content_types() -> None:
    for value in ("application/grpc", "application/grpc+proto", "application/grpc;charset=x"):
        assert is_grpc_content_type(value), value
    for value in ("", "application/json", "application/grpcx", "application/grp"):
        assert not is_grpc_content_type(value), value
