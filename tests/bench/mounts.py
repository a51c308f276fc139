"""Mount helpers for the benchmarks: container-like overlays, and unmounting without hanging."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lazyimage.fusefs import force_unmount, mounts_under

__all__ = ["mount_overlay", "remove_mounts", "umount"]

_TIMEOUT = 60.0


def mount_overlay(lowers: Sequence[Path], base: Path) -> Path:
    """A container-style rootfs: ``lowers`` (topmost first) under an upper and a work dir on
    local disk, mounted at ``base/merged``."""
    upper, work, merged = base / "upper", base / "work", base / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
        capture_output=True, text=True, timeout=_TIMEOUT,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"mounting an overlay at {merged} failed: {done.stderr.strip()}")
    return merged


def umount(target: Path | str) -> None:
    """Unmount ``target``; detach it lazily if it is busy. Never raises."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        done = subprocess.run(["umount", str(target)], capture_output=True, timeout=_TIMEOUT)
        if done.returncode == 0:
            return
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=_TIMEOUT)


def remove_mounts(base: Path) -> int:
    """Every mount on or under ``base``: overlays and other mounts first (topmost first),
    then FUSE connections aborted and detached. Returns how many mounts were left after."""
    for mount in reversed(mounts_under(base)):
        if not mount.is_fuse:
            umount(mount.mountpoint)
    with contextlib.suppress(OSError):
        force_unmount(base)
    return len(mounts_under(base))
