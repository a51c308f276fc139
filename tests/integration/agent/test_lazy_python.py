"""The python image served lazily by the real agent, overlaid by real overlayfs.

The workload runs in a chroot of the overlay; the registry's access log says what was
fetched. Then the whole merged tree is compared with a plain unpack of the source image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import overlay
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.fixtures.unpack import diff_trees, tree_manifest, unpack_layers
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import push_estargz, registry_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _run_probe(root: Path) -> str:
    done = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", PYTHON_PROBE_CODE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_python_starts_from_lazy_layers_and_the_tree_matches(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    registry.clear_access_log()
    mounted = [agent.mount(image.ref, layer.digest, image.toc(layer)) for layer in image.layers]
    paths = [Path(m["path"]) for m in mounted]
    merged = overlay(list(reversed(paths)), tmp_path / "merged")

    assert _run_probe(merged) == PYTHON_PROBE_OUTPUT

    fetched = registry_bytes(registry, [layer.digest for layer in image.layers])
    record_property("fetched_bytes", fetched)
    record_property("image_bytes", image.total_size)
    print(f"\nfetched {fetched} of {image.total_size} bytes before the first output")
    assert fetched < image.total_size * 0.5, (fetched, image.total_size)

    python_layer = mounted[1]["name"]
    read = [entry["path"] for entry in agent.profile(python_layer)]
    assert any(p.startswith("usr/lib/python3.11/json/__pycache__/") for p in read), read
    assert any(p.startswith("usr/lib/python3.11/asyncio/") for p in read), read
    assert all(not p.startswith("usr/lib/python3.11/unittest/") for p in read)

    metrics = agent.metrics()
    demand = sum(
        v
        for k, v in metrics.items()
        if k.startswith("lazyimage_fetched_bytes_total{") and 'reason="demand"' in k
    )
    assert demand > 0

    source = tmp_path / "source"
    unpack_layers(python_image.layer_paths, source)
    assert diff_trees(tree_manifest(source), tree_manifest(merged)) == []


def test_status_and_health_endpoints(registry: RegistryServer, agent_factory: Any) -> None:
    agent = agent_factory([registry.host])
    assert agent.request("GET", "/healthz").strip() == "ok"
    assert agent.request("GET", "/readyz").strip() == "ready"
    status = agent.request("GET", "/status")
    assert status["ready"] is True and status["layers"] == []
    assert json.loads(json.dumps(status))["cache"]["capacity"] > 0
    text = agent.request("GET", "/metrics")
    assert "lazyimage_cache_bytes" in text
