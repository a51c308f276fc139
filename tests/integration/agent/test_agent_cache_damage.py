"""Chunk files damaged on the cache disk, while the agent runs and across a restart: a read
through the FUSE mount gets the right bytes (fetched again from the registry and verified),
never the damaged ones; the damaged file is replaced, and counted."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.agent.test_agent_faults import (
    JSON_DECODER,
    _drop_page_cache,
    _mount_all,
    _toc_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COLORSYS = "usr/lib/python3.11/colorsys.py"
DISCARDED = "lazyimage_cache_discarded_chunks_total"


def _discarded(agent: AgentProcess, reason: str) -> float:
    return agent.metrics().get(f'{DISCARDED}{{reason="{reason}"}}', 0.0)


def _chunk_file(agent: AgentProcess, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return agent.state_dir / "cache" / "sha256" / hexdigest[:2] / hexdigest


def _holds(path: Path, digest: str) -> bool:
    return path.exists() and "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _wait_stored(path: Path, digest: str) -> None:
    """The fetched chunk is written back by a writer thread; the test's timeout bounds this."""
    while not _holds(path, digest):
        time.sleep(0.05)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def test_damaged_chunk_files_are_never_served(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    layer = image.layers[1]
    toc = _toc_of(registry, layer.digest)
    state = tmp_path / "state"
    agent = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    layer_dir = _mount_all(agent, image)[1]
    expected = {path: (layer_dir / path).read_bytes() for path in (JSON_DECODER, COLORSYS)}
    chunks = {}
    for path in expected:
        node = toc.lookup(path)
        assert node is not None and node.chunks
        chunks[path] = node.chunks[0]
        _wait_stored(_chunk_file(agent, chunks[path].digest), chunks[path].digest)

    # Bytes flipped in place while the agent runs (the agent has the file open).
    flipped = _chunk_file(agent, chunks[JSON_DECODER].digest)
    before = _discarded(agent, "digest_mismatch")
    _flip(flipped, chunks[JSON_DECODER].size // 2)
    _drop_page_cache()
    assert (layer_dir / JSON_DECODER).read_bytes() == expected[JSON_DECODER]
    assert _discarded(agent, "digest_mismatch") == before + 1
    _wait_stored(flipped, chunks[JSON_DECODER].digest)  # fetched again and stored whole

    # A torn file: cut short while the agent runs.
    torn = _chunk_file(agent, chunks[COLORSYS].digest)
    before = _discarded(agent, "size_changed")
    os.truncate(torn, chunks[COLORSYS].size // 3)
    _drop_page_cache()
    assert (layer_dir / COLORSYS).read_bytes() == expected[COLORSYS]
    assert _discarded(agent, "size_changed") == before + 1
    _wait_stored(torn, chunks[COLORSYS].digest)

    # Damaged while no agent runs: the next agent hashes what it found before serving it.
    assert agent.stop() == 0
    _flip(flipped, 0)
    os.truncate(torn, 1)
    second = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    layer_dir = _mount_all(second, image)[1]
    _drop_page_cache()
    for path, data in expected.items():
        assert (layer_dir / path).read_bytes() == data
    # Found at start, both are indexed at the size they have: both fail their hash.
    assert _discarded(second, "digest_mismatch") == 2
    for chunk in chunks.values():
        _wait_stored(_chunk_file(second, chunk.digest), chunk.digest)
