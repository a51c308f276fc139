"""Driving ``serve.py`` from tests, and mounting and unmounting overlays on its layers.

Cleanup never touches a FUSE mount's files: a server that died answers ENOTCONN and one
that hangs blocks every access. It reads /proc/self/mountinfo instead, unmounts overlays
first, then aborts each FUSE connection (fusectl) and detaches the mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lazyimage.fusefs import force_unmount, mounts_under

__all__ = ["SERVE", "FuseServer", "Mounts", "ServerError"]

SERVE = Path(__file__).with_name("serve.py")
_REPO = Path(__file__).resolve().parents[3]
_REPLY_TIMEOUT = 60.0


class ServerError(RuntimeError):
    pass


class FuseServer:
    """``serve.py MOUNTPOINT`` in a subprocess, driven over its stdin and stdout."""

    def __init__(self, mountpoint: Path, log: Path, *, open_round_trip: bool = False) -> None:
        self.mountpoint = mountpoint
        self.log_path = log
        args = [sys.executable, str(SERVE), str(mountpoint)]
        if open_round_trip:
            args.append("--open-round-trip")
        env = {**os.environ, "PYTHONPATH": f"{_REPO / 'nodeagent'}{os.pathsep}{_REPO}"}
        with open(log, "wb") as log_file:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env
            )
        self._buffer = b""
        ready = self._read_reply()
        if not ready.get("ready"):
            raise ServerError(f"server did not start: {ready}")
        self.pid: int = ready["pid"]
        self.no_open: bool = ready["no_open"]
        self.connection: int = ready["connection"]

    # Protocol

    def _read_reply(self, timeout: float = _REPLY_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ServerError(f"no answer from the server in {timeout} s\n{self.log()}")
            data = os.read(fd, 65536)
            if not data:
                raise ServerError(f"the server exited ({self.proc.poll()})\n{self.log()}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read_reply()
        if not reply.get("ok"):
            raise ServerError(f"{command}: {reply.get('error')}")
        return reply

    def add(self, name: str, blob: Path) -> Path:
        return Path(self.call(op="add", name=name, blob=str(blob))["path"])

    def remove(self, name: str) -> None:
        self.call(op="remove", name=name)

    def profile(self, name: str) -> list[tuple[str, float]]:
        return [(path, seconds) for path, seconds in self.call(op="profile", name=name)["profile"]]

    def stats(self) -> dict[str, Any]:
        return self.call(op="stats")

    def fail(self, name: str, on: bool) -> None:
        self.call(op="fail", name=name, on=on)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    # Ending

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def quit(self, timeout: float = 20.0) -> int:
        """Ask the server to unmount and exit; returns its exit code."""
        if self.alive:
            with contextlib.suppress(ServerError, BrokenPipeError):
                self.call(op="quit")
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Mounts:
    """FUSE servers and overlays under one directory, all removed by ``cleanup``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[FuseServer] = []
        self._count = 0

    def server(
        self, *, open_round_trip: bool = False, mountpoint: Path | None = None
    ) -> FuseServer:
        self._count += 1
        mountpoint = mountpoint or self.base / f"fuse{self._count}"
        log = self.base / f"server{self._count}.log"
        server = FuseServer(mountpoint, log, open_round_trip=open_round_trip)
        self.servers.append(server)
        return server

    def overlay(self, lowers: list[Path], name: str = "merged", *, writable: bool = False) -> Path:
        """An overlay of ``lowers``, topmost first (``lowerdir=L3:L2:L1``).

        ``writable`` adds an upper and a work directory on local disk, as a container's
        rootfs has (and as one lowerdir alone needs).
        """
        merged = self.base / name
        merged.mkdir(parents=True, exist_ok=True)
        option = "lowerdir=" + ":".join(str(p) for p in lowers)
        if writable:
            upper, work = self.base / f"{name}.upper", self.base / f"{name}.work"
            upper.mkdir(exist_ok=True)
            work.mkdir(exist_ok=True)
            option += f",upperdir={upper},workdir={work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", option, str(merged)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return merged

    def mounted(self) -> list[str]:
        return [m.mountpoint for m in mounts_under(self.base)]

    def cleanup_forced(self) -> int:
        """Abort and detach everything at once, talking to no server (for hung ones)."""
        return force_unmount(self.base)

    def cleanup(self) -> int:
        """Unmount overlays, stop servers, then abort and detach what is left.

        Returns how many mounts had to be forced off after the servers stopped.
        """
        for mount in reversed(mounts_under(self.base)):
            if not mount.is_fuse:
                result = subprocess.run(["umount", mount.mountpoint], capture_output=True)
                if result.returncode != 0:
                    subprocess.run(["umount", "-l", mount.mountpoint], capture_output=True)
        for server in self.servers:
            if server.alive:
                try:
                    server.quit()
                except subprocess.TimeoutExpired:
                    server.kill()
            server.close_pipes()
        return force_unmount(self.base)
