"""Fetch tests run under trio, as the agent does; a few also under asyncio."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
