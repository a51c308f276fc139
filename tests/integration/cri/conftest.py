"""The CRI tests' fixtures: ``cri_node_factory`` (tests/fixtures/cri.py) on top of the
registry, image and agent fixtures that tests/conftest.py registers."""

from __future__ import annotations

from tests.fixtures.cri import cri_node_factory

__all__ = ["cri_node_factory"]
