"""Small HTTP helpers with no I/O: Content-Range, Retry-After, media types and error bodies."""

from __future__ import annotations

import email.utils
import json
import re
import time
from dataclasses import dataclass

__all__ = [
    "IDENTITY",
    "ContentRange",
    "error_detail",
    "media_type_of",
    "parse_content_range",
    "parse_retry_after",
]

# Asks for a body as stored: digests are over those bytes.
IDENTITY = {"Accept-Encoding": "identity"}

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ContentRange:
    """``Content-Range: bytes first-last/size``; ``first``/``last`` are None for ``*/size``."""

    first: int | None
    last: int | None
    size: int | None

    @property
    def length(self) -> int:
        if self.first is None or self.last is None:
            return 0
        return self.last - self.first + 1


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a byte Content-Range; None if absent or malformed (first > last included)."""
    if not value:
        return None
    match = _CONTENT_RANGE_RE.match(value)
    if not match:
        return None
    first_text, last_text, size_text = match.groups()
    size = None if size_text == "*" else int(size_text)
    if first_text is None:
        return ContentRange(None, None, size) if size is not None else None
    first, last = int(first_text), int(last_text)
    if first > last or (size is not None and last >= size):
        return None
    return ContentRange(first, last, size)


def media_type_of(content_type: str | None) -> str:
    """The media type of a Content-Type value, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def error_detail(body: bytes) -> str:
    """A short text from a registry's JSON error body (``{"errors":[{"code","message"}]}``)."""
    try:
        obj = json.loads(body)
        errors = obj["errors"]
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        return "; ".join(p for p in parts if p)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return " ".join(text.split())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
