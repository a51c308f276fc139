"""Fixtures for the FUSE tests: eStargz blobs of the python image, and a mount owner that
always leaves the machine without mounts (overlay first, then FUSE, aborting if needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lazyimage import estargz

from tests.fixtures.images import TestImage
from tests.integration.fusefs.harness import Mounts


@pytest.fixture(scope="session")
def python_esgz(python_image: TestImage, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The python image's layers as eStargz blobs, lowest first (level 1: quick to build)."""
    out = tmp_path_factory.mktemp("python-esgz")
    blobs = []
    for index, layer in enumerate(python_image.layer_paths):
        blob = out / f"layer{index}.esgz"
        with open(blob, "wb") as f:
            estargz.build(layer, f, estargz.BuildOptions(level=1))
        blobs.append(blob)
    return blobs


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    owner = Mounts(tmp_path / "mounts")
    owner.base.mkdir()
    try:
        yield owner
    finally:
        owner.cleanup()
        left = owner.mounted()
        assert not left, f"mounts left behind: {left}"
