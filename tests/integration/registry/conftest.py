"""Registry client tests run under asyncio; a few also under trio (parametrised there)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
