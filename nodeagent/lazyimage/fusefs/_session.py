"""The process's one FUSE session (pyfuse3 keeps its session in module globals).

    fs = LayerFilesystem()
    with FuseSession(mountpoint, fs) as session:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)      # returns once the mount answers
            fs.add_layer("sha256-abc", layer)       # -> mountpoint / "sha256-abc"
            ...
            session.terminate()                     # serve() returns; leaving unmounts
                                                    # (or, with a holder, keeps the mount)

Mount options: ``fsname=lazyimage,subtype=lazyimage,allow_other,ro,default_permissions``.
``max_read`` is never passed: libfuse then fails INIT against pyfuse3's buffer size.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from types import TracebackType

import pyfuse3
import structlog
import trio

from lazyimage import holder
from lazyimage.fusefs._device import mount_fuse, read_init, resend_pending
from lazyimage.fusefs._mounts import MountInfo, force_unmount, mounts_at
from lazyimage.fusefs._operations import LayerFilesystem
from lazyimage.fusefs._pyfuse3_build import require_patched_pyfuse3

__all__ = ["MOUNT_OPTIONS", "FuseSession"]

log = structlog.get_logger(__name__)

MOUNT_OPTIONS = frozenset(
    {"fsname=lazyimage", "subtype=lazyimage", "allow_other", "ro", "default_permissions"}
)
_BDI = Path("/sys/class/bdi")

_active: FuseSession | None = None


class FuseSession:
    """Mounts ``fs`` on ``mountpoint`` now; serves it in ``serve``; unmounts in ``close``.

    ``holder``: the socket of a connection holder (``lazyimage.holder``), started in cgroup
    ``holder_cgroup`` when given (to outlive a pod's containers). The session
    deposits its ``/dev/fuse`` descriptor there, and a later session on the same mountpoint
    takes it back and serves the same mount (``adopted``) instead of mounting again, so
    readers of the mount see a pause, not an error. ``close(release=True)`` leaves the
    mount to the holder for the next session. Without a holder, the mount lives as long as
    this session.

    A mount already on ``mountpoint`` that no holder vouches for (left by a killed agent)
    has its FUSE connection aborted and is detached first, since touching it would fail or
    hang.

    ``read_ahead_kb``: the mount's readahead window, raised after INIT (the kernel clamps it
    to INIT's answer) so buffered reads arrive as 1 MiB requests rather than 128 KiB ones.
    ``no_open``: answer opens with ENOSYS so warm opens never reach the agent (the
    kernel's no_open mode; reads still name their file, see ``_pyfuse3_build``); False
    answers every open.

    Raises ``LazyImageError`` before mounting anything if pyfuse3 is not lazyimage's
    patched build.
    """

    mountpoint: Path
    mount: MountInfo
    adopted: bool

    def __init__(
        self,
        mountpoint: Path | str,
        fs: LayerFilesystem,
        *,
        holder: Path | None = None,
        holder_cgroup: str | None = None,
        read_ahead_kb: int = 1024,
        no_open: bool = True,
        min_tasks: int = 1,
        max_tasks: int = 99,
    ) -> None:
        global _active
        if _active is not None:
            raise RuntimeError(f"this process already serves {_active.mountpoint} (pyfuse3)")
        require_patched_pyfuse3()
        self.mountpoint = Path(os.path.abspath(mountpoint))
        self.fs = fs
        self._holder = holder
        self._holder_cgroup = holder_cgroup
        self._read_ahead_kb = read_ahead_kb
        self._tasks = (min_tasks, max_tasks)
        fd, init, self.adopted = self._take_over() or self._mount_fresh()
        fs.mountpoint = self.mountpoint
        try:
            pyfuse3.init(fs, f"/dev/fd/{fd}", set(MOUNT_OPTIONS))
        except BaseException:
            os.close(fd)
            if not self.adopted:
                force_unmount(self.mountpoint)
            raise
        _active = self
        self._open = True
        self._served = False
        try:
            # libfuse answers INIT from the saved request; for a mount taken over, the
            # kernel ignores that answer and keeps the first agent's.
            pyfuse3.process_init(init)
            if self.adopted and not resend_pending(fd):
                log.warning("the kernel cannot resend requests in flight at the takeover")
            fs.no_open = no_open
            self.mount = mounts_at(self.mountpoint)[-1]
        except BaseException:
            self.close()
            raise
        log.info(
            "mounted",
            mountpoint=str(self.mountpoint),
            connection=self.mount.connection,
            no_open=fs.no_open,
            adopted=self.adopted,
        )

    def _take_over(self) -> tuple[int, bytes, bool] | None:
        """The held descriptor of a live mount on this mountpoint, and its INIT request."""
        if self._holder is None:
            return None
        held = holder.take(self._holder)
        if held is None:
            return None
        live = {m.connection for m in mounts_at(self.mountpoint) if m.is_fuse}
        meta = held.meta
        if (
            meta.get("mountpoint") == str(self.mountpoint)
            and meta.get("connection") in live
            and isinstance(meta.get("init"), str)
        ):
            log.info("taking over the mount", mountpoint=str(self.mountpoint))
            return held.fd, base64.b64decode(meta["init"]), True
        os.close(held.fd)
        log.warning("the holder's descriptor is not for this mount", meta=meta)
        return None

    def _mount_fresh(self) -> tuple[int, bytes, bool]:
        if mounts_at(self.mountpoint):
            log.warning("removing a stale mount", mountpoint=str(self.mountpoint))
            force_unmount(self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        fd = mount_fuse(self.mountpoint, MOUNT_OPTIONS)
        try:
            init = read_init(fd)
            if self._holder is not None:
                connection = mounts_at(self.mountpoint)[-1].connection
                meta = {
                    "mountpoint": str(self.mountpoint),
                    "connection": connection,
                    "init": base64.b64encode(init).decode(),
                }
                log_path = self._holder.with_suffix(".log")
                pid = holder.deposit(
                    self._holder, fd, meta, log_path=log_path, cgroup=self._holder_cgroup
                )
                log.info("connection held", holder=str(self._holder), pid=pid)
        except BaseException:
            os.close(fd)
            force_unmount(self.mountpoint)
            raise
        return fd, init, False

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
            self._served = True
            task_status.started()

    def terminate(self) -> None:
        """End ``serve`` (call from the trio thread)."""
        pyfuse3.terminate()

    def close(self, *, release: bool = False) -> None:
        """End the session. The mount goes with it, unless ``release`` and a holder keeps
        the connection for the next session (then readers wait for that one); a mount this
        session made but never served always goes."""
        global _active
        if not self._open:
            return
        self._open = False
        # A fresh mount that never served anything is not worth keeping for anyone.
        keep = release and self._holder is not None and (self.adopted or self._served)
        try:
            pyfuse3.close(unmount=False)  # libfuse mounted nothing: it would unmount nothing
        finally:
            _active = None
            self.fs.mountpoint = None
            if keep:
                log.info("mount left to the holder", mountpoint=str(self.mountpoint))
            else:
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
        # With a holder, the mount outlives the session whatever ended it: the next
        # session on this mountpoint takes it over.
        self.close(release=True)

    def _raise_read_ahead(self) -> None:
        path = _BDI / f"{self.mount.major}:{self.mount.minor}" / "read_ahead_kb"
        try:
            if int(path.read_text()) < self._read_ahead_kb:
                path.write_text(str(self._read_ahead_kb))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise readahead", path=str(path), error=str(exc))
