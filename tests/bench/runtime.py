"""A Python environment with lazyimage's runtime dependencies only, as the agent's image has.

The development environment (.venv) also holds the test and lint tools, and some of them
change what the agent loads: structlog imports ``rich`` when it is installed, httpx
``click``. A benchmark that reports the agent's memory runs it here instead, so the figure is
the deployed agent's. The environment is built once per ``pyproject.toml`` (so anew when its
dependency lists change) and patched pyfuse3 wheel (``scripts/setup`` builds it and says
where) and kept in the cache directory; the agent's code still comes from the checkout
(``AgentProcess`` puts it first on ``PYTHONPATH``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.cache import cache_root

__all__ = ["runtime_python"]

_REPO = Path(__file__).resolve().parents[2]
_INSTALL_TIMEOUT = 900.0


def _pyfuse3_wheels() -> str:
    return (_REPO / ".venv" / "pyfuse3-wheels").read_text().strip()


def _key() -> str:
    h = hashlib.sha256((_REPO / "pyproject.toml").read_bytes())
    h.update(_pyfuse3_wheels().encode())
    return h.hexdigest()[:16]


def runtime_python() -> str:
    """The interpreter of the runtime-only environment, built on first use."""
    root = cache_root() / "runtime-venv" / _key()
    python = root / "bin" / "python"
    if (root / ".complete").exists():
        return str(python)
    print(f"building the runtime-only environment in {root} (about a minute)", file=sys.stderr)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "-q", "--no-cache-dir"),
            *("--find-links", _pyfuse3_wheels(), str(_REPO)),
        ],
        check=True,
        timeout=_INSTALL_TIMEOUT,
    )
    (root / ".complete").touch()
    print(
        f"runtime-only environment ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr
    )
    return str(python)
