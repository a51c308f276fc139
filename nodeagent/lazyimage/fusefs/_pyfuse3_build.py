"""The pyfuse3 build the mount needs: 3.5.0 with lazyimage's patch (``nodeagent/patches``).

The patch adds two things the mount cannot do without, in pyfuse3's own code rather than by
reaching into its or libfuse's memory:

- In the kernel's no_open mode (``open`` answered ENOSYS once, so warm opens never reach the
  agent) reads carry file handle 0; the patched read handler passes the inode instead, so
  ``Operations.read`` still knows the file.
- ``pyfuse3.process_init`` hands libfuse's session the FUSE_INIT request that
  ``FuseSession`` read from ``/dev/fuse`` itself (it keeps that request for an agent that
  takes the mount over later).

``scripts/build-pyfuse3`` builds it; ``scripts/setup`` and the Dockerfile install it, and
pyproject.toml accepts no other pyfuse3.
"""

from __future__ import annotations

import pyfuse3

from lazyimage.errors import LazyImageError

__all__ = ["PATCH_LEVEL", "require_patched_pyfuse3"]

PATCH_LEVEL = 1  # pyfuse3.LAZYIMAGE_PATCH of the build this code is written for


def require_patched_pyfuse3() -> None:
    """Raise a clear error unless the loaded pyfuse3 carries lazyimage's patch."""
    level = getattr(pyfuse3, "LAZYIMAGE_PATCH", None)
    if level != PATCH_LEVEL:
        found = "no" if level is None else f"level {level} of the"
        raise LazyImageError(
            f"pyfuse3 {pyfuse3.__version__} ({pyfuse3.__file__}) has {found} lazyimage patch; "
            f"this lazyimage needs level {PATCH_LEVEL}: install it with scripts/setup, or "
            "build it with scripts/build-pyfuse3 (README, Install notes)"
        )
