"""anyio's trio backend on a virtual clock, for tests of timeouts, backoff and rates.

A module whose tests assert how long something waited overrides its ``anyio_backend``
fixture with ``virtual_trio()``. The clock jumps to the next deadline as soon as every task
waits, so sleeps and timeouts take no real time and last exactly as long as the code asked,
however loaded the machine is: such a test can assert their lengths exactly.

Work in worker threads still takes real time, and while a thread runs the clock may jump to
the next deadline. Assert on timers and on the order of events, never on how long thread
work took, and keep a timeout that must not fire (a demand read's deadline) off the paths
that wait for a thread.
"""

from __future__ import annotations

from typing import Any

import trio.testing

__all__ = ["virtual_trio"]


def virtual_trio() -> tuple[str, dict[str, Any]]:
    """An ``anyio_backend`` value: trio with a fresh auto-jumping MockClock."""
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}
