"""Chunk digests to cache keys. Paths are built only from keys that passed this check."""

from __future__ import annotations

import re

__all__ = ["chunk_key"]

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def chunk_key(digest: str) -> str:
    """The 64 lower-case hex digits of ``sha256:<hex>``; ValueError for anything else."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ValueError(f"not a sha256 chunk digest: {digest!r:.100}")
    return match.group(1)
