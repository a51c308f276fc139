"""containerd's snapshotter service (``containerd.services.snapshots.v1.Snapshots``) on overlayfs,
for lazyimage's node agent, which containerd uses as the proxy snapshotter ``lazyimage``.

    snapshotter = Snapshotter(state_dir / "snapshotter", remote=remote_fs)
    server = serve(snapshotter, Path("/run/lazyimage/snapshotter.sock"))
    ...
    server.stop()
    snapshotter.close()

``python -m lazyimage.snapshotter --root DIR --socket PATH`` serves one without the rest of the
agent (no remote layers); containerd's own snapshotter test suite runs against it.
"""

from lazyimage.snapshotter._cri import CriError, CriImageService, PullAuth
from lazyimage.snapshotter._errors import (
    InvalidSnapshotError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotPreconditionError,
    SnapshotUnavailableError,
)
from lazyimage.snapshotter._metadata import MAX_LABEL_SIZE, Kind, SnapshotInfo
from lazyimage.snapshotter._service import SnapshotterServer, serve
from lazyimage.snapshotter._snapshotter import (
    REMOTE_LABEL,
    REMOTE_LABEL_VALUE,
    Mount,
    RemoteFS,
    Snapshotter,
    Usage,
)

__all__ = [
    "MAX_LABEL_SIZE",
    "REMOTE_LABEL",
    "REMOTE_LABEL_VALUE",
    "CriError",
    "CriImageService",
    "InvalidSnapshotError",
    "Kind",
    "Mount",
    "PullAuth",
    "RemoteFS",
    "SnapshotError",
    "SnapshotExistsError",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "SnapshotPreconditionError",
    "SnapshotUnavailableError",
    "Snapshotter",
    "SnapshotterServer",
    "Usage",
    "serve",
]
