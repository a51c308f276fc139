from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent serves FUSE on trio
