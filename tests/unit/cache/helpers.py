"""Shared helpers for the chunk cache tests: chunk builders and views of the cache dir."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from lazyimage import metrics

__all__ = [
    "chunk_path",
    "digest_of",
    "make_chunk",
    "metric_value",
    "stored_files",
    "temp_files",
]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_chunk(size: int, rng: random.Random) -> tuple[str, bytes]:
    data = rng.randbytes(size)
    return digest_of(data), data


def chunk_path(root: Path, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return root / "sha256" / hexdigest[:2] / hexdigest


def stored_files(root: Path) -> dict[str, int]:
    """Final chunk files on disk: digest -> size."""
    return {
        "sha256:" + p.name: p.stat().st_size
        for p in (root / "sha256").glob("*/*")
        if not p.name.startswith(".")
    }


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "sha256").glob("*/.tmp-*"))


def metric_value(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value
