"""Names of the objects the operator makes, derived from what they stand for."""

from __future__ import annotations

import hashlib
import re

from lazyimage.errors import InvalidReferenceError
from lazyimage.registry import Reference

__all__ = ["canonical_image", "lazyimage_name"]

# A DNS-1123 subdomain is at most 253 characters; leave room for the hash suffix.
_READABLE_MAX = 200
_INVALID = re.compile(r"[^a-z0-9.-]+")


def canonical_image(image: str) -> str:
    """The normalised reference (``nginx`` → ``docker.io/library/nginx:latest``), so that two
    spellings of one image share one LazyImage. An unparsable reference is kept as written; the
    agent reports it as failed."""
    try:
        return str(Reference.parse(image))
    except InvalidReferenceError:
        return image


def lazyimage_name(image: str) -> str:
    """A valid object name for ``image``: readable, and unique through a hash of the reference."""
    canonical = canonical_image(image)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    readable = _INVALID.sub("-", canonical.lower())[:_READABLE_MAX].strip(".-")
    return f"{readable}-{digest}" if readable else digest
