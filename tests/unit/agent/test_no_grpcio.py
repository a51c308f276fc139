"""The agent's process never loads grpcio: its gRPC server and client are lazyimage.grpcwire,
and grpcio alone would cost it more memory than the whole wire code."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_LOADED = (
    "import sys, {module}\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_tools')))\n"
)


@pytest.mark.parametrize("module", ["lazyimage.agent.main", "lazyimage.snapshotter.__main__"])
def test_the_agent_imports_no_grpcio(module: str) -> None:
    assert __import__("grpc")  # installed here (a dev dependency), so an import would load it
    found = subprocess.run(
        [sys.executable, "-c", _LOADED.format(module=module)],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    assert found.stdout.strip() == "[]", found.stdout
