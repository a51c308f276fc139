"""Content digests (``sha256:<hex>``)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from lazyimage.errors import VerificationError

__all__ = ["check_digest", "copy_verified", "is_digest", "sha256_digest"]

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


def copy_verified(
    source: Path, dest: Path, digest: str, progress: Callable[[int], None] | None = None
) -> None:
    """Copy ``source`` to ``dest`` while hashing; ``dest`` is removed if the digest differs."""
    hasher = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while block := src.read(1 << 20):
            hasher.update(block)
            out.write(block)
            if progress:
                progress(len(block))
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        os.unlink(dest)
        raise VerificationError(f"blob {source}: digest {actual} does not match {digest}")
