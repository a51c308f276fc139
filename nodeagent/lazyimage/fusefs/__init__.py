"""The agent's FUSE mount (pyfuse3 on trio): one per process, each layer a subdirectory.

The only package that imports pyfuse3. Layer subdirectories work as overlayfs lowerdirs:
whiteouts are 0/0 character devices, opaque directories report
``trusted.overlay.opaque=y``, and ``statfs`` answers.
"""

from lazyimage.fusefs._inodes import ROOT_INODE, inode, split
from lazyimage.fusefs._mounts import (
    FUSECTL,
    MountInfo,
    abort_connection,
    force_unmount,
    mounts_at,
    mounts_under,
)
from lazyimage.fusefs._operations import LayerFilesystem
from lazyimage.fusefs._session import MOUNT_OPTIONS, FuseSession

__all__ = [
    "FUSECTL",
    "MOUNT_OPTIONS",
    "ROOT_INODE",
    "FuseSession",
    "LayerFilesystem",
    "MountInfo",
    "abort_connection",
    "force_unmount",
    "inode",
    "mounts_at",
    "mounts_under",
    "split",
]
