"""Content-Range and registry error bodies."""

from __future__ import annotations

import pytest
from lazyimage.registry import ContentRange, parse_content_range
from lazyimage.registry._http import error_detail, media_type_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-50/100", ContentRange(0, 50, 100)),
        ("bytes 99-99/100", ContentRange(99, 99, 100)),
        ("BYTES 5-9/*", ContentRange(5, 9, None)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("  bytes 1-2/3 ", ContentRange(1, 2, 3)),
        ("bytes 5-4/100", None),
        ("bytes 0-100/100", None),
        ("bytes 0-5", None),
        ("items 0-5/10", None),
        ("bytes -5/10", None),
        ("bytes */*", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


def test_length() -> None:
    assert ContentRange(10, 19, 100).length == 10
    assert ContentRange(None, None, 100).length == 0


def test_error_detail() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    assert error_detail(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert error_detail(b"<html>\n  Bad   gateway</html>") == "<html> Bad gateway</html>"
    assert error_detail(b"") == ""


def test_media_type_of() -> None:
    assert media_type_of("application/JSON; charset=utf-8") == "application/json"
    assert media_type_of(None) == ""
