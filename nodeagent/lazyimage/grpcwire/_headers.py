"""The HTTP/2 headers of a gRPC call: its content type and its ``grpc-timeout``."""

from __future__ import annotations

import math
import re

__all__ = ["CONTENT_TYPE", "decode_timeout", "encode_timeout", "is_grpc_content_type"]

CONTENT_TYPE = "application/grpc"

# grpc-timeout: at most 8 digits and a unit.
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MAX_DIGITS = 99_999_999


def is_grpc_content_type(value: str) -> bool:
    """``application/grpc``, or with a ``+format`` or ``;parameters`` after it."""
    rest = value.removeprefix(CONTENT_TYPE)
    return rest != value and rest[:1] in ("", "+", ";")


def encode_timeout(seconds: float) -> str:
    """``seconds`` in the finest unit that fits 8 digits, rounded up so that the server
    never sees less time than the caller gave."""
    seconds = max(seconds, 0.0)
    for unit in "numSMH":
        value = math.ceil(seconds / _UNIT_SECONDS[unit])
        if value <= _MAX_DIGITS:
            return f"{value}{unit}"
    return f"{_MAX_DIGITS}H"


def decode_timeout(value: str) -> float:
    """The seconds a ``grpc-timeout`` value allows; ValueError if it is malformed."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise ValueError(f"malformed grpc-timeout {value!r}")
    return int(match[1]) * _UNIT_SECONDS[match[2]]
