"""Warm open+read of 2,000 small files: lazyimage's FUSE layer against local disk.

    python -m tests.integration.fusefs.bench_warm [--files N] [--size BYTES]

Prints µs per file (fastest of five warm passes) for: the layer read directly on the FUSE
mount and through an overlay whose lowerdir is the layer, each with opens answered ENOSYS
(no_open) and with round-trip opens; and the same files unpacked on local disk, directly
and under an overlay. Needs root.

Two ways of reading: ``open(path, "rb").read()`` as Python code does, and raw
``os.open``/``os.read``/``os.close``. Python's ``open`` asks ``isatty()``, an ioctl that
FUSE always forwards to the daemon (libfuse answers ENOSYS; the kernel never caches it),
so on the bare FUSE mount it costs a round trip; overlayfs answers it itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.fixtures.unpack import unpack_layers
from tests.integration.fusefs.harness import Mounts
from tests.integration.fusefs.layers import build_layer, small_files

PASSES = 5


def _paths(root: Path) -> list[Path]:
    return [path for directory in sorted(root.iterdir()) for path in sorted(directory.iterdir())]


def _python_pass(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            f.read()
    return time.perf_counter() - start


def _raw_pass(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 1 << 16)
        os.close(fd)
    return time.perf_counter() - start


def measure(root: Path) -> tuple[float, float]:
    """µs per file (Python open, raw syscalls): a cold pass, then the fastest warm one."""
    paths = _paths(root)
    _python_pass(paths)
    python = min(_python_pass(paths) for _ in range(PASSES))
    raw = min(_raw_pass(paths) for _ in range(PASSES))
    return python / len(paths) * 1e6, raw / len(paths) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        base = Path(tmp)
        blob = build_layer(small_files(args.files, args.size), base / "small.esgz")
        local = unpack_layers([blob], base / "local")
        mounts = Mounts(base / "mounts")
        mounts.base.mkdir()
        results: dict[str, tuple[float, float]] = {}
        try:
            results["local disk"] = measure(local)
            results["local disk, overlay"] = measure(
                mounts.overlay([local], "local-merged", writable=True)
            )
            for round_trip in (False, True):
                mode = "open round trip" if round_trip else "no_open"
                server = mounts.server(open_round_trip=round_trip)
                assert server.no_open is not round_trip
                layer = server.add("small", blob)
                results[f"FUSE, {mode}"] = measure(layer)
                merged = mounts.overlay([layer], f"merged-{mode[:4]}", writable=True)
                results[f"FUSE under overlay, {mode}"] = measure(merged)
        finally:
            mounts.cleanup()
    print(f"warm open+read of {args.files} files of {args.size} bytes, µs per file:")
    print(f"  {'':36} {'open()':>8} {'os.open':>8}")
    for name, (python, raw) in results.items():
        print(f"  {name:36} {python:8.1f} {raw:8.1f}")


if __name__ == "__main__":
    main()
