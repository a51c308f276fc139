"""A slow link for benchmarks: a network namespace behind a veth pair, shaped with ``tc tbf``.

    with ShapedLink() as link:                # namespace + veth, 10.213.0.1 <-> 10.213.0.2
        server = RegistryServer(dir, listen_host=link.peer_address, command_prefix=link.exec_prefix)
        ...                                   # fill the registry at full speed
        link.shape("200mbit")                 # then tbf on both ends of the pair
        ...
        link.unshape()

The pair uses only the private /30 ``10.213.0.0/30``. The namespace is named after this
process (``lzbench-PID``) so that a later run can remove what a killed run left behind, and
everything is removed on exit, also after a failure. netem is not available here, so the link
adds no delay: it limits the rate (tbf on each end's egress), and queues at most ``latency``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from types import TracebackType

__all__ = ["ShapedLink", "ShapingError"]

_PREFIX = "lzbench-"
_TIMEOUT = 30.0


class ShapingError(RuntimeError):
    """An ``ip`` or ``tc`` command failed."""


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=_TIMEOUT)
    if check and done.returncode != 0:
        raise ShapingError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces (and with them their veth ends) of earlier runs that are gone."""
    removed = []
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        suffix = name.removeprefix(_PREFIX)
        if name.startswith(_PREFIX) and suffix.isdigit() and not _alive(int(suffix)):
            _run(["ip", "link", "del", f"lzb{suffix}h"], check=False)
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


class ShapedLink:
    """A namespace reachable at ``peer_address`` from this one, through a veth pair."""

    def __init__(
        self,
        *,
        host_address: str = "10.213.0.1",
        peer_address: str = "10.213.0.2",
        prefix_length: int = 30,
    ) -> None:
        pid = os.getpid()
        self.namespace = f"{_PREFIX}{pid}"
        self.host_veth = f"lzb{pid}h"  # interface names are at most 15 bytes
        self.peer_veth = f"lzb{pid}n"
        self.host_address = host_address
        self.peer_address = peer_address
        self._prefix_length = prefix_length
        self._created = False
        self.rate: str | None = None

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Put before a command line to run it inside the namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def _in_ns(self, *cmd: str) -> list[str]:
        return [*self.exec_prefix, *cmd]

    def create(self) -> ShapedLink:
        remove_stale()
        taken = _run(["ip", "-o", "addr", "show"]).stdout
        if f" {self.host_address}/" in taken:
            raise ShapingError(f"{self.host_address} is already assigned on this host")
        self._created = True
        try:
            _run(["ip", "netns", "add", self.namespace])
            veth = ["type", "veth", "peer", "name", self.peer_veth]
            _run(["ip", "link", "add", self.host_veth, *veth])
            _run(["ip", "link", "set", self.peer_veth, "netns", self.namespace])
            cidr = f"/{self._prefix_length}"
            _run(["ip", "addr", "add", self.host_address + cidr, "dev", self.host_veth])
            _run(["ip", "link", "set", self.host_veth, "up"])
            _run(self._in_ns("ip", "addr", "add", self.peer_address + cidr, "dev", self.peer_veth))
            _run(self._in_ns("ip", "link", "set", self.peer_veth, "up"))
            _run(self._in_ns("ip", "link", "set", "lo", "up"))
        except BaseException:
            self.remove()
            raise
        return self

    def shape(self, rate: str, *, burst: str = "256kb", latency: str = "50ms") -> None:
        """``tc qdisc replace ... root tbf`` on both ends: each direction at ``rate``."""
        tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        _run(["tc", "qdisc", "replace", "dev", self.host_veth, *tbf])
        _run(self._in_ns("tc", "qdisc", "replace", "dev", self.peer_veth, *tbf))
        self.rate = rate

    def unshape(self) -> None:
        _run(["tc", "qdisc", "del", "dev", self.host_veth, "root"], check=False)
        _run(self._in_ns("tc", "qdisc", "del", "dev", self.peer_veth, "root"), check=False)
        self.rate = None

    def qdisc_stats(self) -> str:
        """``tc -s qdisc`` of the namespace's end (what the responses went through)."""
        return _run(self._in_ns("tc", "-s", "qdisc", "show", "dev", self.peer_veth)).stdout

    def remove(self) -> None:
        if not self._created:
            return
        self._created = False
        # Deleting one end of a pair deletes both; deleting the namespace would too.
        with contextlib.suppress(ShapingError, subprocess.TimeoutExpired):
            _run(["ip", "link", "del", self.host_veth], check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run(["ip", "netns", "del", self.namespace], check=False)

    def __enter__(self) -> ShapedLink:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
