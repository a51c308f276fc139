"""Prefetch: the priority zone when a layer is mounted, prefetch without mounting (what the
operator's prewarm orders use), and background fill."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import overlay
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE
from tests.integration.agent.lazyimage_env import push_estargz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _by_reason(agent: Any, reason: str) -> float:
    return sum(
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_fetched_bytes_total{") and f'reason="{reason}"' in series
    )


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _fuse_operations(agent: Any, operation: str) -> float:
    series = f'lazyimage_fuse_operation_duration_seconds_count{{operation="{operation}"}}'
    return float(agent.metrics().get(series, 0.0))


def test_prefetch_without_mounting_warms_the_cache(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    listing = tmp_path / "startup.txt"
    listing.write_text("usr/lib/python3.11/json/**\nusr/lib/python3.11/encodings/**\n")
    image = push_estargz(python_image, registry, "lazy/python", "--prioritize-from", str(listing))
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    python_layer = image.layers[1]
    body = {"ref": image.ref, "digest": python_layer.digest, "tocDigest": image.toc(python_layer)}
    answer = agent.request("POST", "/v1/prefetch", body)
    assert answer["chunks"] > 10 and answer["fetchedBytes"] > 0
    assert agent.request("GET", "/v1/layers") == []  # nothing was mounted

    named = agent.request(
        "POST", "/v1/prefetch", {**body, "paths": ["usr/lib/python3.11/colorsys.py"]}
    )
    assert named["chunks"] == 1

    layer_dir = Path(agent.mount(image.ref, python_layer.digest, image.toc(python_layer))["path"])
    before = _by_reason(agent, "demand")
    (layer_dir / "usr/lib/python3.11/json/__init__.py").read_bytes()
    (layer_dir / "usr/lib/python3.11/colorsys.py").read_bytes()
    assert _by_reason(agent, "demand") == before  # all of it came from the cache

    with pytest.raises(Exception, match="404"):
        agent.request("POST", "/v1/prefetch", {**body, "paths": ["no/such/file"]})


def test_the_priority_zone_is_fetched_at_mount(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    listing_args = ("--prioritize", "usr/lib/python3.11/json/**")
    image = push_estargz(python_image, registry, "lazy/python", *listing_args)
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    python_layer = image.layers[1]
    mounted = agent.mount(image.ref, python_layer.digest, image.toc(python_layer))
    assert mounted["prefetchZone"] > 0

    def done() -> bool:
        layers = agent.request("GET", "/v1/layers")
        return bool(layers and layers[0]["prefetchDone"])

    _wait(done, 60)
    assert _by_reason(agent, "prefetch") > 0
    layer_dir = Path(mounted["path"])
    before = _by_reason(agent, "demand")
    for path in (layer_dir / "usr/lib/python3.11/json").rglob("*"):
        if path.is_file():
            path.read_bytes()
    assert _by_reason(agent, "demand") == before


def test_prefetch_of_a_mounted_layer_leaves_its_files_in_the_kernels_caches(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    # What a prewarm order does once the node's pull has mounted the layer: afterwards a
    # container's lookups and reads of the zone's files never reach the agent, as with files
    # a pull has just written to disk.
    image = push_estargz(
        python_image, registry, "lazy/python", "--prioritize", "usr/lib/python3.11/json/**"
    )
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    python_layer = image.layers[1]
    body = {"ref": image.ref, "digest": python_layer.digest, "tocDigest": image.toc(python_layer)}
    mounted = agent.mount(image.ref, python_layer.digest, image.toc(python_layer))
    answer = agent.request("POST", "/v1/prefetch", body)
    (tmp_path / "empty").mkdir()  # a read-only overlay takes two lower layers
    merged = overlay([Path(mounted["path"]), tmp_path / "empty"], tmp_path / "merged")
    reads, lookups = _fuse_operations(agent, "read"), _fuse_operations(agent, "lookup")
    json_dir = merged / "usr/lib/python3.11/json"
    names = sorted(str(p.relative_to(json_dir)) for p in json_dir.rglob("*") if p.is_file())
    contents = {name: (json_dir / name).read_bytes() for name in names}
    assert _fuse_operations(agent, "read") == reads  # from the page cache
    assert _fuse_operations(agent, "lookup") == lookups  # from the dentry cache
    assert answer["warmedFiles"] == len(names) >= 5  # the sources and their .pyc
    assert b"JSONDecoder" in contents["decoder.py"]  # the right bytes all the same
    # The zone's files are fetched with the zone anyway: the agent's reads of them are not
    # the workload's startup profile.
    assert agent.profile(mounted["name"]) == []
    # A learned profile's files are warmed too, and stay in the profile this node reports,
    # since the workload's reads of them will not reach the agent.
    colorsys = "usr/lib/python3.11/colorsys.py"
    named = agent.request("POST", "/v1/prefetch", {**body, "paths": [colorsys]})
    assert named["warmedFiles"] == 1
    assert [entry["path"] for entry in agent.profile(mounted["name"])] == [colorsys]


def test_background_fill_fetches_the_rest(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host])  # background fill is on by default
    paths = [
        Path(agent.mount(image.ref, layer.digest, image.toc(layer))["path"])
        for layer in image.layers
    ]
    _wait(lambda: all(layer["fillDone"] for layer in agent.request("GET", "/v1/layers")), 120)
    assert _by_reason(agent, "background") > image.total_size * 0.9
    merged = overlay(list(reversed(paths)), tmp_path / "merged")
    before = _by_reason(agent, "demand")
    done = subprocess.run(
        ["chroot", str(merged), "/usr/bin/python3", "-c", PYTHON_PROBE_CODE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _by_reason(agent, "demand") == before  # everything was already here
