"""The FUSE connection holder: a tiny process that keeps the agent's ``/dev/fuse``
descriptor open while agents come and go, so running containers never see a restart.

A FUSE mount lives as long as some process holds its ``/dev/fuse`` descriptor. The agent
deposits the descriptor here (over a unix socket, ``SCM_RIGHTS``) with a small JSON
description, and a restarted or upgraded agent takes a copy back and serves the same
mount. Requests that arrive meanwhile wait in the kernel.

The holder must almost never need replacing, so it is small, imports nothing but the
standard library (the running process keeps its code whatever is installed later), and
speaks a versioned protocol of one JSON line each way:

    {"op": "hello"}             -> {"protocol": 1, "pid": N, "holding": bool}
    {"op": "put", "meta": {..}} + descriptor -> {"ok": true}
    {"op": "get"}               -> {"meta": {..}} + descriptor, or {"meta": null}
    {"op": "exit"}              -> {"ok": true}, then it closes the descriptor and exits

It exits by itself when the held connection ends (the mount was unmounted or aborted: the
descriptor polls POLLERR), on ``exit``, or if nothing was deposited within ``IDLE_EXIT``
seconds of its start. Only clients with the holder's own uid are answered; the socket is
created owner-only in a directory the caller owns.

In a pod, the holder must also outlive the pod's containers, which end with every process in
their PID namespace and their cgroups. With ``--cgroup PATH`` (in the host's PID namespace), it
first moves itself to cgroup ``PATH`` in each hierarchy it belongs to, through whichever mount
of each whole hierarchy it can see (a pod sees the host's through a hostPath volume of
``/sys/fs/cgroup``; a container's own cgroup mounts show only its subtree).

Run as ``python -m lazyimage.holder [--detach] [--cgroup PATH] SOCKET``.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IDLE_EXIT",
    "PROTOCOL",
    "Held",
    "HolderError",
    "deposit",
    "ensure_running",
    "leave_cgroups",
    "serve",
    "stop",
    "take",
]

PROTOCOL = 1
IDLE_EXIT = 60.0
_MAX_MESSAGE = 1 << 20
_TIMEOUT = 5.0
_START_TIMEOUT = 10.0


class HolderError(OSError):
    """The holder could not be reached or did not answer as expected."""


@dataclass
class Held:
    """A descriptor taken back from the holder (the caller owns and must close it)."""

    fd: int
    meta: dict[str, Any]


# -- client side -------------------------------------------------------------------------------


def take(path: Path) -> Held | None:
    """A copy of the held descriptor and its description; None if there is no holder or it
    holds nothing."""
    try:
        answer, fd = _ask(path, {"op": "get"})
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    meta = answer.get("meta")
    if fd is None or not isinstance(meta, dict):
        if fd is not None:
            os.close(fd)
        return None
    return Held(fd, meta)


def deposit(
    path: Path,
    fd: int,
    meta: dict[str, Any],
    *,
    log_path: Path | None = None,
    cgroup: str | None = None,
) -> int:
    """Hand ``fd`` (a copy: the caller keeps its own) to the holder at ``path``, starting one
    (moved to ``cgroup``) if none answers. Returns the holder's pid."""
    pid = ensure_running(path, log_path=log_path, cgroup=cgroup)
    answer, _ = _ask(path, {"op": "put", "meta": meta}, fd)
    if answer.get("ok") is not True:
        raise HolderError(f"the holder at {path} refused the descriptor: {answer}")
    return pid


def ensure_running(path: Path, *, log_path: Path | None = None, cgroup: str | None = None) -> int:
    """The pid of the holder answering at ``path``, started first if none does."""
    try:
        return _hello(path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            out = stack.enter_context(open(log_path, "ab"))
        # It detaches (forks, and the first process exits at once), so it is nobody's child
        # and in its own session: a signal to the agent's process group does not reach it.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lazyimage.holder",
                "--detach",
                *(["--cgroup", cgroup] if cgroup else []),
                str(path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
            cwd="/",
            check=True,
            timeout=_START_TIMEOUT,
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            return _hello(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise HolderError(f"no holder answered at {path} after starting one") from None
            time.sleep(0.02)


def stop(path: Path) -> bool:
    """Ask the holder at ``path`` to let go and exit; False if none answered."""
    try:
        _ask(path, {"op": "exit"})
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    return True


def _hello(path: Path) -> int:
    answer, _ = _ask(path, {"op": "hello"})
    if answer.get("protocol") != PROTOCOL or not isinstance(answer.get("pid"), int):
        raise HolderError(f"the holder at {path} speaks another protocol: {answer}")
    return int(answer["pid"])


def _ask(
    path: Path, request: dict[str, Any], fd: int | None = None
) -> tuple[dict[str, Any], int | None]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT)
        with _short_path(path) as address:
            sock.connect(address)
        _send(sock, request, fd)
        return _receive(sock)


# -- the wire ----------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fd: int | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    rights = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sent = sock.sendmsg([data], rights)
    if sent < len(data):
        sock.sendall(data[sent:])


def _receive(sock: socket.socket) -> tuple[dict[str, Any], int | None]:
    data, ancillary, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(struct.calcsize("i")))
    fd: int | None = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fd = array.array("i", payload[: struct.calcsize("i")])[0]
    while not data.endswith(b"\n"):
        more = sock.recv(_MAX_MESSAGE)
        if not more:
            break
        data += more
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        if fd is not None:
            os.close(fd)
        raise HolderError(f"malformed holder message {data[:200]!r}")
    return message, fd


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A unix socket address for ``path`` short enough for ``sun_path`` (108 bytes): the
    directory opened as a descriptor and named through /proc/self/fd."""
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


# -- leaving the pod ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CgroupMount:
    point: Path
    version: int
    options: frozenset[str]  # v1: its controllers (and name=...) among the mount options


def leave_cgroups(target: str, proc: Path = Path("/proc")) -> list[str]:
    """Move this process to cgroup ``target`` in every hierarchy it belongs to, so that
    killing the processes of its old cgroups (a pod's container ending) does not reach it.
    Returns the hierarchies moved ("unified" for v2); raises OSError."""
    mounts = _cgroup_mounts((proc / "self" / "mountinfo").read_text())
    moved: list[str] = []
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, _ = line.split(":", 2)
        wanted = frozenset(c for c in controllers.split(",") if c)
        for mount in mounts:
            if (mount.version == 2 and not wanted) or (wanted and wanted <= mount.options):
                directory = _make_cgroup(mount.point, target, cpuset="cpuset" in wanted)
                (directory / "cgroup.procs").write_text(str(os.getpid()))
                moved.append(controllers or "unified")
                break
    return moved


def _cgroup_mounts(mountinfo: str) -> list[_CgroupMount]:
    """The mounts of whole cgroup hierarchies (root ``/``), from a mountinfo table."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5 or fields[3] != "/":
            continue
        fstype, _, super_options = line.split(" - ", 1)[1].split(" ")[:3]
        if fstype in ("cgroup", "cgroup2"):
            version = 2 if fstype == "cgroup2" else 1
            point = Path(fields[4].replace("\\040", " "))
            mounts.append(_CgroupMount(point, version, frozenset(super_options.split(","))))
    return mounts


def _make_cgroup(hierarchy: Path, target: str, *, cpuset: bool) -> Path:
    """``target`` under ``hierarchy``, made a level at a time: a new cpuset cgroup has no
    cpus or mems, and nothing can join it until they are copied from its parent."""
    directory = hierarchy
    for part in Path(target.strip("/")).parts:
        parent, directory = directory, directory / part
        directory.mkdir(exist_ok=True)
        if cpuset:
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (directory / name).read_text().strip():
                    (directory / name).write_text((parent / name).read_text())
    return directory


# -- the holder process ------------------------------------------------------------------------


def serve(path: Path, *, idle_exit: float = IDLE_EXIT) -> int:
    """Hold what is deposited at ``path`` until the connection ends. Returns an exit code."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _short_path(path) as address:
        if path.exists() or path.is_symlink():
            path.unlink()
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            listener.bind(address)
        finally:
            os.umask(old_umask)
    bound = path.stat().st_ino
    listener.listen(8)
    held: int | None = None
    meta: dict[str, Any] | None = None
    started = time.monotonic()
    _say(f"holding for {path} (protocol {PROTOCOL})")
    try:
        while True:
            poller = select.poll()
            poller.register(listener, select.POLLIN)
            if held is not None:
                poller.register(held, 0)  # only POLLERR/POLLHUP: the connection ended
            timeout = (
                None if held is not None else max(0.0, idle_exit - (time.monotonic() - started))
            )
            events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
            if not events and held is None and time.monotonic() - started >= idle_exit:
                _say("nothing deposited; exiting")
                return 0
            for polled, mask in events:
                if polled == held and mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    _say("the held connection ended; exiting")
                    return 0
            if not any(polled == listener.fileno() for polled, _ in events):
                continue
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(_TIMEOUT)
                if not _same_user(conn):
                    continue
                try:
                    request, fd = _receive(conn)
                except (OSError, HolderError) as exc:
                    _say(f"bad request: {exc}")
                    continue
                op = request.get("op")
                if op == "put" and fd is not None and isinstance(request.get("meta"), dict):
                    if held is not None:
                        os.close(held)
                    held, meta = fd, request["meta"]
                    _send(conn, {"ok": True})
                    _say(f"holding descriptor for {meta.get('mountpoint', '?')}")
                    continue
                if fd is not None:
                    os.close(fd)
                if op == "hello":
                    _send(
                        conn,
                        {"protocol": PROTOCOL, "pid": os.getpid(), "holding": held is not None},
                    )
                elif op == "get":
                    _send(conn, {"meta": meta}, held)
                elif op == "exit":
                    _send(conn, {"ok": True})
                    _say("asked to exit")
                    return 0
                else:
                    _send(conn, {"error": f"unknown request {op!r}"})
    finally:
        if held is not None:
            os.close(held)
        listener.close()
        # Only our own socket: a newer holder may have taken the path over.
        try:
            if path.stat().st_ino == bound:
                path.unlink()
        except OSError:
            pass


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _say(message: str) -> None:
    print(f"lazyimage-holder[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    detach = argv[:1] == ["--detach"]
    args = argv[1:] if detach else argv
    cgroup = None
    if args[:1] == ["--cgroup"] and len(args) > 1:
        cgroup, args = args[1], args[2:]
    if len(args) != 1:
        print(
            "usage: python -m lazyimage.holder [--detach] [--cgroup PATH] SOCKET", file=sys.stderr
        )
        return 2
    if detach:
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
    if cgroup is not None:
        # Best effort: staying in the pod's cgroups only loses the mount with the pod, as
        # without a holder; the agent's pod restarts are what this is for.
        try:
            _say(f"moved to cgroup {cgroup} in: {', '.join(leave_cgroups(cgroup)) or 'none'}")
        except (OSError, ValueError) as exc:
            _say(f"could not leave the pod's cgroups for {cgroup}: {exc}")
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
