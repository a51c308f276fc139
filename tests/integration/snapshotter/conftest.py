"""Fixtures for the snapshotter integration tests: a served snapshotter and a mount owner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.snapshotter.helpers import Mounter, Served, served_snapshotter


@pytest.fixture
def mounter() -> Iterator[Mounter]:
    owner = Mounter()
    try:
        yield owner
    finally:
        stuck = owner.unmount_all()
        assert not stuck, f"mounts left behind: {stuck}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with served_snapshotter(tmp_path / "root", tmp_path / "snapshotter.sock") as s:
        yield s
