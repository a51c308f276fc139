"""Test images built here from Debian packages, cached outside the repo.

``python -m tests.images build [NAME ...]`` builds what is missing; the pytest fixtures in
``tests/fixtures/images.py`` load them (and build them on a cache miss). The recipes are in
``tests.images.recipes``; the cache layout is described in ``tests.images.builder``.
"""

from __future__ import annotations

from tests.images.builder import (
    IMAGE_TAG,
    BuildError,
    build,
    find_image,
    image_dir,
    images_root,
    recipe_key,
)
from tests.images.recipes import (
    BUSYBOX,
    NUMPY,
    NUMPY_PROBE_CODE,
    NUMPY_PROBE_OUTPUT,
    PYTHON,
    PYTHON_PROBE_CODE,
    PYTHON_PROBE_OUTPUT,
    PYTHON_TOP,
    PYTHON_V2,
    RECIPES,
    TEST_IMAGES,
)

__all__ = [
    "BUSYBOX",
    "IMAGE_TAG",
    "NUMPY",
    "NUMPY_PROBE_CODE",
    "NUMPY_PROBE_OUTPUT",
    "PYTHON",
    "PYTHON_PROBE_CODE",
    "PYTHON_PROBE_OUTPUT",
    "PYTHON_TOP",
    "PYTHON_V2",
    "RECIPES",
    "TEST_IMAGES",
    "BuildError",
    "build",
    "find_image",
    "image_dir",
    "images_root",
    "recipe_key",
]
