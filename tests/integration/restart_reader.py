"""A container that reads files in a loop across agent restarts: its program, the files'
expected digests, and the stall each restart caused, read from its log."""

from __future__ import annotations

import hashlib
import itertools
import tarfile
from collections.abc import Sequence

from tests.fixtures.images import TestImage
from tests.images import PYTHON_TOP

__all__ = ["FILES", "READER", "Read", "expected_digests", "parse_reads", "stalls"]

FILES = (
    "usr/lib/python3.11/json/decoder.py",
    "usr/lib/python3.11/encodings/utf_8.py",
    "usr/bin/sha256sum",
    PYTHON_TOP.big_file,
)
# Reads each file, prints its digest or the error, with the time, forever.
READER = """
import hashlib, sys, time
while True:
    for path in sys.argv[1:]:
        try:
            with open(path, "rb") as f:
                line = "ok " + hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            line = "FAIL " + repr(exc)
        print(f"{time.time():.6f} {path} {line}", flush=True)
    time.sleep(0.02)
"""

Read = tuple[float, str, str]  # (time, path, "ok <sha256>" or "FAIL <error>")


def expected_digests(image: TestImage) -> dict[str, str]:
    """Each file's sha256 from the image's own gzip layers (the topmost copy wins), by the
    absolute path the reader is given."""
    found: dict[str, str] = {}
    for layer in image.layer_paths:
        with tarfile.open(layer, "r:gz") as archive:
            for member in archive:
                name = member.name.lstrip("./")
                if name in FILES and member.isfile():
                    data = archive.extractfile(member)
                    assert data is not None
                    found[name] = hashlib.sha256(data.read()).hexdigest()
    assert set(found) == set(FILES), set(FILES) - set(found)
    return {f"/{name}": digest for name, digest in found.items()}


def parse_reads(lines: Sequence[str]) -> list[Read]:
    out = []
    for line in lines:
        stamp, path, result = line.split(" ", 2)
        out.append((float(stamp), path, result))
    return out


def stalls(reads: Sequence[Read], stopped_at: Sequence[float]) -> list[float]:
    """For each restart (the old agent ending at ``stopped_at[i]``), the longest wait between
    two reads from then until the next restart. A read already waiting when the agent ended
    counts from its predecessor."""
    stamps = [stamp for stamp, _, _ in reads]
    windows = zip(stopped_at, [*stopped_at[1:], stamps[-1]], strict=True)
    return [
        _longest_gap([t for t in stamps if _last_before(stamps, start) <= t <= end])
        for start, end in windows
    ]


def _last_before(stamps: list[float], moment: float) -> float:
    return max((t for t in stamps if t < moment), default=moment)


def _longest_gap(stamps: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
