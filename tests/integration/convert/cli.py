"""Running the real ``lazyimage`` command in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CliResult", "lazyimage"]


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def lazyimage(
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> CliResult:
    """``prefix`` runs the command under another, such as ``setpriv`` with fewer rights."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "lazyimage.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
