"""The gRPC face of the snapshotter: containerd.services.snapshots.v1.Snapshots on a unix socket.

Translation only: protobuf messages to and from Snapshotter calls, and SnapshotError classes to
the status codes containerd's ``errdefs.FromGRPC`` understands. Any other exception becomes
UNKNOWN after being logged (``lazyimage.grpcwire``).

The server runs each call on a thread pool. The agent's main loop is trio; the snapshotter
does blocking file and sqlite work, so threads keep it off that loop entirely.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog
from google.protobuf import empty_pb2, timestamp_pb2

from lazyimage.grpcwire import Method, RpcError, Server, StatusCode, server_streaming, unary
from lazyimage.snapshotter._errors import (
    InvalidSnapshotError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotPreconditionError,
    SnapshotUnavailableError,
)
from lazyimage.snapshotter._metadata import SnapshotInfo
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)
from lazyimage.snapshotter._proto.containerd.types import mount_pb2
from lazyimage.snapshotter._snapshotter import Mount, Snapshotter

__all__ = ["SnapshotsServicer", "SnapshotterServer", "methods", "serve", "status_code"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

_SERVICE = "/containerd.services.snapshots.v1.Snapshots/"
_LIST_BATCH = 100  # infos per List message, as containerd's own service sends them
_CODES: tuple[tuple[type[SnapshotError], StatusCode], ...] = (
    (SnapshotNotFoundError, StatusCode.NOT_FOUND),
    (SnapshotExistsError, StatusCode.ALREADY_EXISTS),
    (InvalidSnapshotError, StatusCode.INVALID_ARGUMENT),
    (SnapshotPreconditionError, StatusCode.FAILED_PRECONDITION),
    (SnapshotUnavailableError, StatusCode.UNAVAILABLE),
)


def status_code(error: SnapshotError) -> StatusCode:
    """The status containerd maps back to the same errdefs class."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return StatusCode.UNKNOWN


def _call(method: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except SnapshotError as exc:
        raise RpcError(status_code(exc), str(exc)) from None
    except Exception:
        log.exception("snapshotter_call_failed", method=method)
        raise


def _mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _info(info: SnapshotInfo) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=pb.Kind.ValueType(int(info.kind)),
        created_at=_timestamp(info.created_ns),
        updated_at=_timestamp(info.updated_ns),
        labels=dict(info.labels),
    )


class SnapshotsServicer:
    """Serves one Snapshotter; the ``snapshotter`` field of requests is not checked, since a
    proxy plugin socket serves exactly one snapshotter."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self._sn = snapshotter

    def Prepare(self, request: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        labels = dict(request.labels)
        mounts = _call("Prepare", lambda: self._sn.prepare(request.key, request.parent, labels))
        return pb.PrepareSnapshotResponse(mounts=_mounts(mounts))

    def View(self, request: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        labels = dict(request.labels)
        mounts = _call("View", lambda: self._sn.view(request.key, request.parent, labels))
        return pb.ViewSnapshotResponse(mounts=_mounts(mounts))

    def Mounts(self, request: pb.MountsRequest) -> pb.MountsResponse:
        mounts = _call("Mounts", lambda: self._sn.mounts(request.key))
        return pb.MountsResponse(mounts=_mounts(mounts))

    def Commit(self, request: pb.CommitSnapshotRequest) -> empty_pb2.Empty:
        labels = dict(request.labels)
        _call("Commit", lambda: self._sn.commit(request.name, request.key, labels))
        return empty_pb2.Empty()

    def Remove(self, request: pb.RemoveSnapshotRequest) -> empty_pb2.Empty:
        _call("Remove", lambda: self._sn.remove(request.key))
        return empty_pb2.Empty()

    def Stat(self, request: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:
        info = _call("Stat", lambda: self._sn.stat(request.key))
        return pb.StatSnapshotResponse(info=_info(info))

    def Update(self, request: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:
        labels = dict(request.info.labels)
        paths = list(request.update_mask.paths)
        info = _call("Update", lambda: self._sn.update(request.info.name, labels, paths))
        return pb.UpdateSnapshotResponse(info=_info(info))

    def List(self, request: pb.ListSnapshotsRequest) -> Iterator[pb.ListSnapshotsResponse]:
        # Read everything before the first message: a bad filter is then an error status, not
        # a broken stream, and the caller may call back (Stat, Remove) while it reads.
        infos = _call("List", lambda: self._sn.walk(list(request.filters)))
        for start in range(0, len(infos), _LIST_BATCH):
            batch = infos[start : start + _LIST_BATCH]
            yield pb.ListSnapshotsResponse(info=[_info(i) for i in batch])

    def Usage(self, request: pb.UsageRequest) -> pb.UsageResponse:
        usage = _call("Usage", lambda: self._sn.usage(request.key))
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(self, request: pb.CleanupRequest) -> empty_pb2.Empty:
        _call("Cleanup", self._sn.cleanup)
        return empty_pb2.Empty()


def methods(servicer: SnapshotsServicer) -> dict[str, Method]:
    """The service's methods by path, as the server routes them."""
    return {
        _SERVICE + "Prepare": unary(pb.PrepareSnapshotRequest.FromString, servicer.Prepare),
        _SERVICE + "View": unary(pb.ViewSnapshotRequest.FromString, servicer.View),
        _SERVICE + "Mounts": unary(pb.MountsRequest.FromString, servicer.Mounts),
        _SERVICE + "Commit": unary(pb.CommitSnapshotRequest.FromString, servicer.Commit),
        _SERVICE + "Remove": unary(pb.RemoveSnapshotRequest.FromString, servicer.Remove),
        _SERVICE + "Stat": unary(pb.StatSnapshotRequest.FromString, servicer.Stat),
        _SERVICE + "Update": unary(pb.UpdateSnapshotRequest.FromString, servicer.Update),
        _SERVICE + "List": server_streaming(pb.ListSnapshotsRequest.FromString, servicer.List),
        _SERVICE + "Usage": unary(pb.UsageRequest.FromString, servicer.Usage),
        _SERVICE + "Cleanup": unary(pb.CleanupRequest.FromString, servicer.Cleanup),
    }


class SnapshotterServer:
    """A running server; ``stop`` ends it and removes its socket."""

    def __init__(self, server: Server, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._server = server

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let running ones finish for up to ``grace`` seconds, then end."""
        self._server.stop(grace)
        _remove_socket(self.socket_path)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server ends (True) or ``timeout`` passes (False)."""
        return self._server.wait(timeout)

    def __enter__(self) -> SnapshotterServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    snapshotter: Snapshotter, socket_path: Path, *, max_workers: int = 16
) -> SnapshotterServer:
    """Serve ``snapshotter`` on the unix socket ``socket_path`` (replacing a stale socket file)
    from a pool of ``max_workers`` threads, and return at once."""
    socket_path = socket_path.absolute()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_socket(socket_path)
    server = Server(
        methods(SnapshotsServicer(snapshotter)),
        socket_path,
        max_workers=max_workers,
        # The socket hands out mount points of the host: only root (containerd) may use it.
        socket_mode=0o600,
        thread_name="snapshotter",
    )
    server.start()
    log.info("snapshotter_serving", socket=str(socket_path), root=str(snapshotter.root))
    return SnapshotterServer(server, socket_path)


def _remove_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
