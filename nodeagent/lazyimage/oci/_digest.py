"""Content digests (``sha256:<hex>``)."""

from __future__ import annotations

import hashlib
import re

from lazyimage.errors import VerificationError

__all__ = ["check_digest", "is_digest", "sha256_digest"]

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def check_digest(data: bytes, expected: str, what: str = "content") -> None:
    """Raise VerificationError unless ``data`` hashes to ``expected``."""
    actual = sha256_digest(data)
    if actual != expected:
        raise VerificationError(f"{what}: digest {actual} does not match expected {expected}")
