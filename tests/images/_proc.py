"""Bounded subprocesses and safe removal of build directories."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "CommandError",
    "mounts_under",
    "remove_tree",
    "run",
    "run_streaming",
]


class CommandError(RuntimeError):
    """A command failed or ran past its time limit."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group the command leads (debootstrap forks dpkg, chroot, ...)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``cmd`` to completion within ``timeout`` seconds and return its stdout.

    The command runs in its own process group, which is killed as a whole on timeout.
    """
    argv = [os.fspath(c) for c in cmd]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CommandError(f"{argv[0]}: no result after {timeout:.0f}s: {' '.join(argv)}") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()[-2000:]
        raise CommandError(f"{' '.join(argv)} exited with {proc.returncode}: {detail}")
    return out.decode(errors="replace")


def run_streaming(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    on_line: Callable[[str], None],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    tick: Callable[[], None] | None = None,
    tick_every: float = 10.0,
) -> None:
    """Run ``cmd`` with stdout and stderr merged, handing each line to ``on_line``.

    ``tick`` is called every ``tick_every`` seconds while the command runs, so a caller
    can report progress during long silent phases. The whole process group is killed if
    the command is still running after ``timeout`` seconds.
    """
    argv = [os.fspath(c) for c in cmd]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, name=f"pump-{argv[0]}", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + tick_every
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                _kill_group(proc)
                raise CommandError(f"{argv[0]}: still running after {timeout:.0f}s; killed")
            try:
                line = lines.get(timeout=min(1.0, deadline - now))
            except queue.Empty:
                line = ""
            else:
                if line is None:
                    break
                on_line(line)
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + tick_every
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    if rc != 0:
        raise CommandError(f"{' '.join(argv)} exited with {rc}")


def _decode_mountinfo_path(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    base = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            mnt = _decode_mountinfo_path(fields[4])
            if mnt == base or mnt.startswith(base + "/"):
                found.append(Path(mnt))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a build directory, first unmounting anything a killed build left mounted in it.

    debootstrap mounts /proc and /sys inside the target while it configures packages; a
    build killed at that moment leaves them mounted, and a recursive delete must never
    descend into them.
    """
    if not path.exists() and not path.is_symlink():
        return
    for mnt in mounts_under(path):
        subprocess.run(
            ["umount", "--lazy", str(mnt)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    left = mounts_under(path)
    if left:
        raise CommandError(f"cannot remove {path}: still mounted: {', '.join(map(str, left))}")
    shutil.rmtree(path)
