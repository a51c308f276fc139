"""The process's one FUSE session (pyfuse3 keeps its session in module globals).

    fs = LayerFilesystem()
    with FuseSession(mountpoint, fs) as session:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)      # returns once the mount answers
            fs.add_layer("sha256-abc", layer)       # -> mountpoint / "sha256-abc"
            ...
            session.terminate()                     # serve() returns; close() unmounts

Mount options: ``fsname=lazyimage,subtype=lazyimage,allow_other,ro,default_permissions``.
``max_read`` is never passed: libfuse then fails INIT against pyfuse3's buffer size.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import pyfuse3
import structlog
import trio

from lazyimage.fusefs import _noopen
from lazyimage.fusefs._mounts import MountInfo, force_unmount, mounts_at
from lazyimage.fusefs._operations import LayerFilesystem

__all__ = ["MOUNT_OPTIONS", "FuseSession"]

log = structlog.get_logger(__name__)

MOUNT_OPTIONS = frozenset(
    {"fsname=lazyimage", "subtype=lazyimage", "allow_other", "ro", "default_permissions"}
)
_BDI = Path("/sys/class/bdi")

_active: FuseSession | None = None


class FuseSession:
    """Mounts ``fs`` on ``mountpoint`` now; serves it in ``serve``; unmounts in ``close``.

    A mount already on ``mountpoint`` (left by a killed agent) has its FUSE connection
    aborted and is detached first, since touching it would fail or hang.

    ``read_ahead_kb``: the mount's readahead window, raised after INIT (the kernel clamps it
    to INIT's answer) so buffered reads arrive as 1 MiB requests rather than 128 KiB ones.
    ``no_open``: answer opens with ENOSYS so warm opens never reach the agent, when the
    read path can still tell files apart (``_noopen``); otherwise opens are answered.
    """

    mountpoint: Path
    mount: MountInfo

    def __init__(
        self,
        mountpoint: Path | str,
        fs: LayerFilesystem,
        *,
        read_ahead_kb: int = 1024,
        no_open: bool = True,
        min_tasks: int = 1,
        max_tasks: int = 99,
    ) -> None:
        global _active
        if _active is not None:
            raise RuntimeError(f"this process already serves {_active.mountpoint} (pyfuse3)")
        self.mountpoint = Path(os.path.abspath(mountpoint))
        self.fs = fs
        self._read_ahead_kb = read_ahead_kb
        self._tasks = (min_tasks, max_tasks)
        if mounts_at(self.mountpoint):
            log.warning("removing a stale mount", mountpoint=str(self.mountpoint))
            force_unmount(self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        fs.mountpoint = self.mountpoint
        pyfuse3.init(fs, str(self.mountpoint), set(MOUNT_OPTIONS))
        _active = self
        self._open = True
        try:
            fs.no_open = no_open and _install_no_open()
            self.mount = mounts_at(self.mountpoint)[-1]
        except BaseException:
            self.close()
            raise
        log.info(
            "mounted",
            mountpoint=str(self.mountpoint),
            connection=self.mount.connection,
            no_open=fs.no_open,
        )

    @property
    def no_open(self) -> bool:
        return self.fs.no_open

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until ``terminate`` or an unmount. Started once the mount answers."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main, *self._tasks)
            # The loop just started answers INIT; a stat waits for that answer.
            await trio.to_thread.run_sync(os.stat, self.mountpoint, abandon_on_cancel=True)
            self._raise_read_ahead()
            task_status.started()

    def terminate(self) -> None:
        """End ``serve`` (call from the trio thread)."""
        pyfuse3.terminate()

    def close(self) -> None:
        """Unmount and end the session; a mount libfuse leaves behind is aborted and detached."""
        global _active
        if not self._open:
            return
        self._open = False
        try:
            pyfuse3.close(unmount=True)
        finally:
            _active = None
            self.fs.mountpoint = None
            if mounts_at(self.mountpoint):
                force_unmount(self.mountpoint)
            log.info("unmounted", mountpoint=str(self.mountpoint))

    def __enter__(self) -> FuseSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _raise_read_ahead(self) -> None:
        path = _BDI / f"{self.mount.major}:{self.mount.minor}" / "read_ahead_kb"
        try:
            if int(path.read_text()) < self._read_ahead_kb:
                path.write_text(str(self._read_ahead_kb))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise readahead", path=str(path), error=str(exc))


def _install_no_open() -> bool:
    extension = pyfuse3.__file__
    if extension is None:
        return False
    try:
        return _noopen.install(extension)
    except (OSError, ValueError) as exc:  # an unreadable or odd extension file
        log.warning("no_open mode unavailable", error=str(exc))
        return False
