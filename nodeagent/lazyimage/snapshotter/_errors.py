"""The errors the snapshotter raises, one per containerd errdefs class it answers with.

    LazyImageError
    └── SnapshotError
        ├── SnapshotNotFoundError      no snapshot (or parent) by that key
        ├── SnapshotExistsError        the key or name is taken; also "the target is remote now"
        ├── InvalidSnapshotError       a malformed request: empty key, label too long, bad filter
        ├── SnapshotPreconditionError  the snapshot is in the wrong state (has children, not active)
        └── SnapshotUnavailableError   a remote layer under the snapshot cannot serve reads now

containerd acts on the class, not the message: ALREADY_EXISTS from Prepare is how a remote
snapshotter says "skip the download", and GC gives up on anything but FAILED_PRECONDITION from
Remove. Only ``_service`` maps these to gRPC codes.
"""

from __future__ import annotations

from lazyimage.errors import LazyImageError

__all__ = [
    "InvalidSnapshotError",
    "SnapshotError",
    "SnapshotExistsError",
    "SnapshotNotFoundError",
    "SnapshotPreconditionError",
    "SnapshotUnavailableError",
]


class SnapshotError(LazyImageError):
    """A snapshotter request that cannot be carried out."""


class SnapshotNotFoundError(SnapshotError):
    """No snapshot by that key or name (NOT_FOUND)."""


class SnapshotExistsError(SnapshotError):
    """The key or name is already taken (ALREADY_EXISTS)."""


class InvalidSnapshotError(SnapshotError, ValueError):
    """The request itself is malformed (INVALID_ARGUMENT)."""


class SnapshotPreconditionError(SnapshotError):
    """The snapshot is not in a state that allows this (FAILED_PRECONDITION)."""


class SnapshotUnavailableError(SnapshotError):
    """A remote layer the snapshot needs cannot serve reads right now (UNAVAILABLE)."""
