"""Read-ahead through the real agent and registry: a miss on a small file of a package
fetches the files that follow it in the blob in the same range GET, verified; a forged
neighbour is refused without failing the read it came with."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from lazyimage import estargz
from zlib_ng import zlib_ng

from tests.fixtures.faults import FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import push_estargz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PYTHON_BINARY = "usr/bin/python3.11"
JSON_CACHE = "usr/lib/python3.11/json/__pycache__/"


def _toc_of(registry: RegistryServer, digest: str) -> estargz.TOC:
    data = registry.blob_path(digest).read_bytes()
    return estargz.open_toc(lambda o, n: data[o : o + n], len(data))


def _package(toc: estargz.TOC) -> list[tuple[str, estargz.Node]]:
    """The json package's compiled files, in blob order, each one member after the other."""
    files = sorted(
        ((path, node) for path, node in toc.files() if path.startswith(JSON_CACHE)),
        key=lambda item: item[1].chunks[0].offset,
    )
    assert len(files) >= 3, files
    for (_, a), (_, b) in itertools.pairwise(files):
        assert len(a.chunks) == 1 and a.chunks[0].end == b.chunks[0].offset
    return files


def _ranges(proxy: FaultProxy, digest: str, since: int) -> list[tuple[int, int]]:
    return [
        (int(first), int(last) + 1)
        for request in proxy.requests[since:]
        if request.method == "GET" and digest in request.path and request.range
        for first, last in [re.findall(r"\d+", request.range)]
    ]


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _mount(agent: Any, image: Any, ref: str, index: int) -> Path:
    layer = image.layers[index]
    return Path(agent.mount(ref, layer.digest, image.toc(layer))["path"])


def test_a_miss_fetches_the_next_files_of_its_package_in_the_same_get(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    layer = image.layers[1]
    toc = _toc_of(registry, layer.digest)
    files = _package(toc)
    with FaultProxy(registry.host) as proxy:  # to see each request's Range
        agent = agent_factory([proxy.host], extra=["--no-background-fill"])
        root = _mount(agent, image, image.ref.replace(registry.host, proxy.host), 1)
        # A large first read gives the layer a read-ahead budget (a share of what readers read).
        (root / PYTHON_BINARY).read_bytes()
        seen = len(proxy.requests)

        (first, node), (second, after) = files[0], files[1]
        assert _digest(root / first) == node.entry.digest
        [(start, end)] = _ranges(proxy, layer.digest, seen)
        assert start == node.chunks[0].offset
        assert end >= after.chunks[0].end  # the next file came along
        taken = [path for path, n in files[1:] if n.chunks[0].end <= end]

        # The files read ahead are served from the cache, verified, with no request.
        for path in taken:
            entry = toc.lookup(path)
            assert entry is not None and _digest(root / path) == entry.entry.digest
        assert _ranges(proxy, layer.digest, seen) == [(start, end)]
        assert second in taken

    metrics = agent.metrics()
    readahead = sum(
        value
        for series, value in metrics.items()
        if series.startswith("lazyimage_fetched_bytes_total{")
        and 'reason="readahead"' in series
        and layer.digest in series
    )
    assert readahead == end - node.chunks[0].end


def test_a_forged_neighbour_is_refused_and_the_read_it_came_with_succeeds(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    layer = image.layers[1]
    toc = _toc_of(registry, layer.digest)
    (first, node), (second, neighbour) = _package(toc)[:2]
    chunk = neighbour.chunks[0]
    # A valid gzip member with a correct CRC holding other bytes of the same length,
    # padded to the original member's size: only the chunk digest can tell.
    forged = zlib_ng.compress(bytes(chunk.size), 9, 31)
    span = chunk.end - chunk.offset
    assert len(forged) <= span
    with open(registry.blob_path(layer.digest), "r+b") as blob:
        blob.seek(chunk.offset)
        blob.write(forged + bytes(span - len(forged)))

    with FaultProxy(registry.host) as proxy:
        agent = agent_factory([proxy.host], extra=["--no-background-fill"])
        root = _mount(agent, image, image.ref.replace(registry.host, proxy.host), 1)
        (root / PYTHON_BINARY).read_bytes()
        seen = len(proxy.requests)

        assert _digest(root / first) == node.entry.digest
        [(start, end)] = _ranges(proxy, layer.digest, seen)
        assert start == node.chunks[0].offset and end >= chunk.end  # fetched along, once

        # Not cached: asked for, it is fetched on its own, refused again, and never served.
        with pytest.raises(OSError) as failure:
            (root / second).read_bytes()
        assert failure.value.errno == 5
        assert (chunk.offset, chunk.end) in _ranges(proxy, layer.digest, seen)
        # The file it came with is still good.
        assert _digest(root / first) == node.entry.digest

    failures = [
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_chunk_verification_failures_total{")
    ]
    assert sum(failures) >= 2
