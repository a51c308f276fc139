"""The agent's malloc settings: memory a worker thread frees goes back to the system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_REPO = Path(__file__).resolve().parents[3]

# In a fresh interpreter, so this test process keeps its own settings. A worker thread (its
# own arena) frees a large block, which raises glibc's dynamic mmap threshold, then fills
# 48 MiB in 1 MiB buffers with small long-lived blocks between them, and frees the buffers.
# With glibc's defaults about 15 MiB of it stays resident; tuned, none should.
_PROBE = """
import threading
from lazyimage.agent.memory import tune_malloc

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

assert tune_malloc(), "mallopt refused"
pins = []

def work():
    big = b"x" * (8 << 20)
    del big
    buffers = []
    for _ in range(48):
        buffers.append(b"x" * (1 << 20))
        pins.append(b"p" * 2048)
    del buffers

before = rss()
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(rss() - before)
"""


def test_memory_a_thread_frees_is_returned() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(_REPO / "nodeagent")},
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    kept = int(done.stdout)
    assert kept < 4 << 20, f"{kept >> 20} MiB stayed resident"
