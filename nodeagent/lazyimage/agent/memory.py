"""glibc malloc settings that keep the agent's memory close to what it uses.

Two defaults cost the agent memory it never gives back:

- the mmap threshold grows (up to 32 MiB) each time a large block is freed, so after the
  first big buffers (a range body, an inflated chunk) the next ones come from the heap, which
  fragments and keeps the pages. Fixed at 128 KiB, each large buffer is a mapping of its own,
  returned whole when freed;
- each thread that allocates gets an arena of its own, up to 8 per core. Two serve the agent,
  whose threads mostly wait.

On the cold-start benchmark's python image the two took the agent's peak RSS from 96 to
89 MiB. They are set with mallopt before any thread starts; a libc without mallopt (musl)
keeps its own behaviour.
"""

from __future__ import annotations

import ctypes

__all__ = ["tune_malloc"]

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 128 << 10
_ARENAS = 2


def tune_malloc() -> bool:
    """Apply the settings; False if this libc has no mallopt or refused one."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_ARENA_MAX, _ARENAS))
