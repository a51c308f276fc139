"""gRPC's length-prefixed message framing: split at any byte, limits, compressed flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lazyimage.grpcwire import RpcError, StatusCode
from lazyimage.grpcwire._frames import MessageReader, frame

pytestmark = pytest.mark.timeout(60)


def test_frame_is_flag_length_message() -> None:
    assert frame(b"") == b"\0\0\0\0\0"
    assert frame(b"abc") == b"\0\0\0\0\3abc"
    assert frame(b"x" * 0x10203) == b"\0\0\x01\x02\x03" + b"x" * 0x10203


@given(
    messages=st.lists(st.binary(max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_messages_come_back_whatever_the_data_boundaries(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(m) for m in messages)
    reader = MessageReader()
    got: list[bytes] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    reader.finish()
    assert got == messages


def test_a_message_over_the_limit_is_refused_from_its_prefix() -> None:
    reader = MessageReader(limit=10)
    assert reader.feed(frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(RpcError) as refused:
        reader.feed(b"\0\0\0\0\x0b")  # the prefix alone: no need to wait for the bytes
    assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "11 bytes, over the limit of 10" in refused.value.message


@pytest.mark.parametrize(
    ("prefix", "words"),
    [(b"\1\0\0\0\1", "compressed message"), (b"\7\0\0\0\1", "flag 7")],
)
def test_a_compressed_or_unknown_flag_is_internal(prefix: bytes, words: str) -> None:
    with pytest.raises(RpcError) as refused:
        MessageReader().feed(prefix + b"x")
    assert refused.value.code == StatusCode.INTERNAL
    assert words in refused.value.message


def test_a_stream_that_ends_inside_a_message_is_internal() -> None:
    reader = MessageReader()
    assert reader.feed(frame(b"whole") + frame(b"cut short")[:7]) == [b"whole"]
    with pytest.raises(RpcError) as truncated:
        reader.finish()
    assert truncated.value.code == StatusCode.INTERNAL
    assert "7 bytes of it" in truncated.value.message
