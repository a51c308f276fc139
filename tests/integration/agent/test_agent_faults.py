"""The agent under bad conditions: forged chunks, a registry that stops, faults on every
kind of read, concurrent readers, a full or small cache, and a restart.

None asserts how long a read took: a loaded machine stretches it. They check what the
container saw, what the agent counted and logged, and what reached the registry; the exact
timeouts and backoff are asserted on a virtual clock in tests/unit/fetch and
tests/unit/registry."""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import math
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lazyimage import estargz
from lazyimage.fusefs import mounts_at
from zlib_ng import zlib_ng

from tests.fixtures.agent import AgentError, AgentProcess, overlay
from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz, registry_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

JSON_DECODER = "usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc"


def _toc_of(registry: RegistryServer, digest: str) -> estargz.TOC:
    data = registry.blob_path(digest).read_bytes()
    return estargz.open_toc(lambda o, n: data[o : o + n], len(data))


def _mount_all(agent: AgentProcess, image: RemoteImage, ref: str | None = None) -> list[Path]:
    return [
        Path(agent.mount(ref or image.ref, layer.digest, image.toc(layer))["path"])
        for layer in image.layers
    ]


def _probe(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", PYTHON_PROBE_CODE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _range_length(header: str | None) -> int:
    """Bytes asked by a ``Range: bytes=first-last`` header."""
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header or "")
    assert match is not None, header
    return int(match[2]) - int(match[1]) + 1


def _retries(agent: AgentProcess) -> float:
    return sum(
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_fetch_retries_total{")
    )


def _demand_bytes(agent: AgentProcess) -> float:
    return sum(
        value
        for series, value in agent.metrics().items()
        if series.startswith("lazyimage_fetched_bytes_total{") and 'reason="demand"' in series
    )


def test_a_forged_chunk_is_refused_and_counted(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    python_layer = image.layers[1]
    toc = _toc_of(registry, python_layer.digest)
    node = toc.lookup(JSON_DECODER)
    assert node is not None
    chunk = node.chunks[0]
    # A valid gzip member with a correct CRC holding different bytes of the same length,
    # padded to the original member's size: only the chunk digest can tell.
    forged = zlib_ng.compress(bytes(chunk.size), 9, 31)
    span = chunk.end - chunk.offset
    assert len(forged) <= span
    path = registry.blob_path(python_layer.digest)
    with open(path, "r+b") as blob:
        blob.seek(chunk.offset)
        blob.write(forged + bytes(span - len(forged)))

    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    layer_dir = Path(agent.mount(image.ref, python_layer.digest, image.toc(python_layer))["path"])
    with pytest.raises(OSError) as failure:
        (layer_dir / JSON_DECODER).read_bytes()
    assert failure.value.errno == 5  # EIO, and not one forged byte
    failures = [
        v for k, v in agent.metrics().items()
        if k.startswith("lazyimage_chunk_verification_failures_total{")
    ]  # fmt: skip
    assert sum(failures) >= 1
    # Other files of the layer still read.
    assert (layer_dir / "usr/lib/python3.11/json/__init__.py").read_bytes().startswith(b'r"""')


def test_a_mounted_layer_is_not_lent_to_an_image_with_another_toc_digest(
    registry: RegistryServer, busybox_image: TestImage, agent_factory: Any
) -> None:
    """Another image naming the same layer with a TOC digest that is not the layer's is
    refused, as it would be with nothing mounted, for mounts and prefetches alike."""
    image = push_estargz(busybox_image, registry, "lazy/busybox")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    layer = image.layers[0]
    agent.mount(image.ref, layer.digest, image.toc(layer))
    forged = {"ref": image.ref, "digest": layer.digest, "tocDigest": "sha256:" + "0" * 64}
    for path in ("/v1/layers", "/v1/prefetch"):
        with pytest.raises(AgentError) as refused:
            agent.request("POST", path, forged)
        assert "TOC digest" in refused.value.body, (path, refused.value.body)
    [mounted] = agent.request("GET", "/v1/layers")
    assert mounted["users"] == 1


def test_a_registry_that_stops_during_reads(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    merged = overlay(list(reversed(_mount_all(agent, image))), tmp_path / "merged")
    registry.stop()
    restarted = threading.Timer(1.5, registry.start)
    restarted.start()
    try:
        done = _probe(merged)
    finally:
        restarted.join()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == PYTHON_PROBE_OUTPUT
    # The reads met the outage, retried, and were served once the registry was back.
    assert _retries(agent) > 0


def test_a_registry_that_stays_down_gives_eio_within_the_bound(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    layer_dir = _mount_all(agent, image)[1]
    registry.stop()
    # The read ends (by the 30 s demand deadline; the kernel retries a failed read once)
    # instead of hanging: the test's timeout is the only bound it needs here.
    with pytest.raises(OSError) as failure:
        (layer_dir / JSON_DECODER).read_bytes()
    assert failure.value.errno == 5
    failures = [e for e in agent.log_events() if e.get("event") == "read failed"]
    assert failures and {e["file"] for e in failures} == {JSON_DECODER}
    assert all("UnavailableError" in str(e["error"]) for e in failures)


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(503),
        Fault.reset(),
        Fault.truncate(100),
        Fault.stall(math.inf),  # never ends: only the agent's stall timeout can cut it
    ],
    ids=["503", "reset", "cut-short", "stall"],
)
def test_faults_on_footer_toc_and_chunk_reads(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    fault: Fault,
    tmp_path: Path,
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    with FaultProxy(registry.host) as proxy:
        # The first blob GETs of a layer are its footer+TOC reads, later ones chunk reads.
        blob_gets = r"/blobs/sha256:"
        rules = [proxy.add(fault, method="GET", path=blob_gets, nth=n) for n in (1, 4, 7)]
        agent = agent_factory([proxy.host], extra=["--no-background-fill", "--stall-timeout", "1"])
        ref = image.ref.replace(registry.host, proxy.host)
        merged = overlay(list(reversed(_mount_all(agent, image, ref))), tmp_path / "merged")
        done = _probe(merged)
        gets = [r for r in proxy.requests if r.method == "GET" and re.search(blob_gets, r.path)]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == PYTHON_PROBE_OUTPUT
    assert all(rule.applied == 1 for rule in rules)
    # Each request the fault broke was given up and asked again: the same range of the
    # same blob came back later (a stall never ends by itself, so the agent cut it). A
    # body shorter than a truncation's cut is not broken by it.
    faulty = [r for r in gets if r.fault is not None]
    assert len(faulty) == 3
    for request in faulty:
        if fault.kind == "truncate" and _range_length(request.range) <= (fault.after or 0):
            continue
        later = gets[gets.index(request) + 1 :]
        assert any((r.path, r.range) == (request.path, request.range) for r in later), request


def test_32_concurrent_readers_fetch_each_chunk_once(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    with FaultProxy(registry.host) as proxy:  # used only to see each request's Range
        agent = agent_factory([proxy.host], extra=["--no-background-fill"])
        ref = image.ref.replace(registry.host, proxy.host)
        layer_dir = _mount_all(agent, image, ref)[1]
        stdlib = layer_dir / "usr/lib/python3.11"
        files = sorted(
            p for d in ("json", "email", "asyncio", "encodings")
            for p in (stdlib / d).rglob("*") if p.is_file()
        )  # fmt: skip
        assert len(files) > 100
        seen_before = len(proxy.requests)

        def read_some(worker: int) -> str:
            digest = hashlib.sha256()
            # Overlapping subsets, in different orders.
            for path in files[worker % 4 :: 2][:: 1 if worker % 2 else -1]:
                digest.update(path.read_bytes())
            return digest.hexdigest()

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(read_some, range(32)))
        assert len(set(results[0::4])) == 1  # same files, same bytes
        ranges = [
            r.range for r in proxy.requests[seen_before:]
            if r.method == "GET" and image.layers[1].digest in r.path and r.range
        ]  # fmt: skip
    spans = sorted(tuple(map(int, re.findall(r"\d+", r))) for r in ranges)
    assert spans, "no chunk was fetched"
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start > end, f"byte ranges fetched twice: {spans}"


def test_images_that_share_layers_and_chunks_fetch_only_what_differs(
    registry: RegistryServer,
    python_image: TestImage,
    python_v2_image: TestImage,
    agent_factory: Any,
    tmp_path: Path,
) -> None:
    v1 = push_estargz(python_image, registry, "lazy/python")
    v2 = push_estargz(python_v2_image, registry, "lazy/python-v2")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    colorsys = "usr/lib/python3.11/colorsys.py"

    def workload(root: Path) -> None:
        done = _probe(root)
        assert done.returncode == 0, done.stderr
        (root / colorsys).read_bytes()

    workload(overlay(list(reversed(_mount_all(agent, v1))), tmp_path / "v1"))
    registry.clear_access_log()
    workload(overlay(list(reversed(_mount_all(agent, v2))), tmp_path / "v2"))

    changed = [b for a, b in zip(v1.layers, v2.layers, strict=True) if a.digest != b.digest]
    assert len(changed) == 1
    toc = _toc_of(registry, changed[0].digest)
    node = toc.lookup(colorsys)
    assert node is not None
    file_bytes = sum(c.end - c.offset for c in node.chunks)
    toc_bytes = changed[0].size - toc.toc_offset
    fetched = registry_bytes(registry, [layer.digest for layer in v2.layers])
    # The footer+TOC reads of the new layer (a 512 KiB tail at most), plus the changed file.
    assert fetched <= max(toc_bytes, 512 << 10) + file_bytes + (64 << 10), fetched


def test_a_full_cache_disk_does_not_fail_reads(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    state = tmp_path / "state"
    cache_dir = state / "cache"
    cache_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache_dir)], check=True)
    try:
        agent = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
        merged = overlay(list(reversed(_mount_all(agent, image))), tmp_path / "merged")
        done = _probe(merged)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == PYTHON_PROBE_OUTPUT
        errors = [
            v for k, v in agent.metrics().items()
            if k.startswith("lazyimage_cache_write_errors_total{") and "ENOSPC" in k
        ]  # fmt: skip
        assert sum(errors) >= 1
        leftovers = [p for p in cache_dir.rglob("*") if p.name.startswith(".tmp")]
        assert leftovers == []
        agent.stop()
    finally:
        subprocess.run(["umount", "-l", str(cache_dir)], check=False)


def test_a_cache_cap_smaller_than_the_image(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    cap = 3 << 20
    agent = agent_factory([registry.host], extra=["--no-background-fill", "--cache-size", str(cap)])
    merged = overlay(list(reversed(_mount_all(agent, image))), tmp_path / "merged")
    done = _probe(merged)
    assert done.returncode == 0, done.stderr
    status = agent.request("GET", "/status")
    assert 0 < status["cache"]["bytes"] <= cap
    on_disk = sum(p.stat().st_size for p in (agent.state_dir / "cache").rglob("*") if p.is_file())
    assert on_disk <= cap


def test_a_restart_keeps_the_chunk_cache(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    image = push_estargz(python_image, registry, "lazy/python")
    state = tmp_path / "state"
    first = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    merged = overlay(list(reversed(_mount_all(first, image))), tmp_path / "first")
    assert _probe(merged).returncode == 0
    subprocess.run(["umount", str(merged)], check=True)
    assert first.stop() == 0
    # The holder keeps the mount (nobody serves it until the next agent takes it over).
    assert [m.fstype for m in mounts_at(first.mountpoint)] == ["fuse.lazyimage"]

    second = agent_factory([registry.host], extra=["--no-background-fill"], state_dir=state)
    registry.clear_access_log()
    merged = overlay(list(reversed(_mount_all(second, image))), tmp_path / "second")
    assert _probe(merged).stdout.strip() == PYTHON_PROBE_OUTPUT
    assert _demand_bytes(second) == 0
    for layer in image.layers:  # only footer and TOC reads reached the registry
        assert len(registry.blob_gets(layer.digest)) <= 2


def test_a_registry_gone_for_a_minute_and_back(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any
) -> None:
    """Cached files keep reading through the outage; an uncached one fails with EIO (the
    demand deadline) rather than hang, and reads again once the registry is back, from the
    same agent."""
    image = push_estargz(python_image, registry, "lazy/python")
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    layer_dir = _mount_all(agent, image)[1]
    cached = "usr/lib/python3.11/json/__init__.py"
    expected = (layer_dir / cached).read_bytes()
    toc = _toc_of(registry, image.layers[1].digest)
    node = toc.lookup(JSON_DECODER)
    assert node is not None
    data = registry.blob_path(image.layers[1].digest).read_bytes()
    uncached = b"".join(
        estargz.verify_chunk(c, data[c.offset : c.end]) for c in node.chunks
    )  # the file's bytes, straight from the blob
    outage = 60.0
    registry.stop()
    stopped = time.monotonic()
    _drop_page_cache()
    assert (layer_dir / cached).read_bytes() == expected
    with pytest.raises(OSError) as failure:
        (layer_dir / JSON_DECODER).read_bytes()
    assert failure.value.errno == 5
    _drop_page_cache()
    assert (layer_dir / cached).read_bytes() == expected  # after the failed read, too
    time.sleep(max(0.0, outage - (time.monotonic() - stopped)))  # the outage lasts a minute
    registry.start()
    assert (layer_dir / JSON_DECODER).read_bytes() == uncached
    assert agent.proc.poll() is None  # the same agent throughout
    failures = [e for e in agent.log_events() if e.get("event") == "read failed"]
    assert failures and {e["file"] for e in failures} == {JSON_DECODER}


def _drop_page_cache() -> None:
    """So the next read of a file reaches the agent."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def test_a_cache_disk_that_fills_up_during_the_background_fill(
    registry: RegistryServer, python_image: TestImage, agent_factory: Any, tmp_path: Path
) -> None:
    """The cap is larger than the disk: the fill runs the disk full (ENOSPC) and goes on;
    reads still succeed, nothing torn is left, and the cache's count matches the disk."""
    image = push_estargz(python_image, registry, "lazy/python")
    state = tmp_path / "state"
    cache_dir = state / "cache"
    cache_dir.mkdir(parents=True)
    cap = 64 << 20
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(cache_dir)], check=True)
    try:
        agent = agent_factory(
            [registry.host],
            extra=["--background-quiet", "0", "--cache-size", str(cap)],
            state_dir=state,
        )
        merged = overlay(list(reversed(_mount_all(agent, image))), tmp_path / "merged")
        done = _probe(merged)  # while the fill runs
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == PYTHON_PROBE_OUTPUT
        while not all(layer["fillDone"] for layer in agent.request("GET", "/v1/layers")):
            time.sleep(0.2)  # the test's timeout bounds the fill
        errors = [
            v for k, v in agent.metrics().items()
            if k.startswith("lazyimage_cache_write_errors_total{") and "ENOSPC" in k
        ]  # fmt: skip
        assert sum(errors) >= 1
        assert _probe(merged).stdout.strip() == PYTHON_PROBE_OUTPUT  # after it, too

        def files() -> list[Path]:
            return [p for p in cache_dir.rglob("*") if p.is_file() and p.name != ".lock"]

        # The probe's chunks are written behind its reads: wait for the last write to end
        # (the test's timeout bounds it), then the count matches the disk, byte for byte.
        while agent.request("GET", "/status")["cache"]["bytes"] != sum(
            p.stat().st_size for p in files()
        ):
            time.sleep(0.2)
        assert [p for p in files() if p.name.startswith(".tmp")] == []
        for path in files():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
        assert sum(p.stat().st_size for p in files()) <= cap
        agent.stop()
    finally:
        subprocess.run(["umount", "-l", str(cache_dir)], check=False)
