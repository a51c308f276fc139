"""Fixtures of the chart tests."""

from __future__ import annotations

import pytest

from tests.fixtures.gotools import go_tool
from tests.integration.deploy.helm import Helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm v3 (tests/goref/helm), built on first use, with a home of its own."""
    return Helm(go_tool("helm"), tmp_path_factory.mktemp("helm-home"))
