"""The access recorder: which files a mount's workload read, and when, in first-read order.

A mounted layer answers ``open`` without a round trip (the kernel's no_open mode), so the
daemon never sees opens; the first read of a file is what marks it as needed. Files that
are never read (empty ones, or ones only stat-ed) do not appear, and they cost no fetch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["AccessRecorder", "ProfileEntry"]


class ProfileEntry(NamedTuple):
    path: str  # the file's path in the layer, e.g. "usr/lib/python3.11/json/__init__.py"
    seconds: float  # since the recorder started (the layer was mounted)


class AccessRecorder:
    """Records the first read of each file of one mount.

    ``clock`` is a monotonic clock in seconds; the recorder starts when it is created.
    Memory is one int and one entry per file read, bounded by the layer's file count.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._seen: set[int] = set()
        self._entries: list[ProfileEntry] = []

    def record(self, key: int, path: str) -> None:
        """Note a read of file ``key`` (a node id) at ``path``; only the first one counts."""
        if key in self._seen:
            return
        self._seen.add(key)
        self._entries.append(ProfileEntry(path, self._clock() - self._start))

    def ignore(self, key: int) -> None:
        """Never record file ``key``: its reads are the agent's own, not the workload's."""
        self._seen.add(key)

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    def profile(self) -> list[ProfileEntry]:
        """The files read so far, in the order of their first read."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
