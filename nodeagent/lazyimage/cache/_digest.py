"""Chunk digests to cache keys. Paths are built only from keys that passed this check."""

from __future__ import annotations

import re

__all__ = ["chunk_key", "key_hex"]

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def chunk_key(digest: str) -> bytes:
    """The 32 bytes of ``sha256:<64 lower-case hex>``; ValueError for anything else.

    Raw bytes, not the hex: the cache indexes every chunk it holds, and a 32-byte key takes
    half the memory of its 64-character text.
    """
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ValueError(f"not a sha256 chunk digest: {digest!r:.100}")
    return bytes.fromhex(match.group(1))


def key_hex(key: bytes) -> str:
    """The key as the digest's hex (the file name, and what logs show)."""
    return key.hex()
