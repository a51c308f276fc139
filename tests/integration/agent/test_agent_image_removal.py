"""An image removed while its layers are being filled in, as kubelet's image garbage
collection removes it: containerd removes the image's snapshots through the snapshotter
socket, leaf first. The layers are unmounted, their background fill stops, and their chunks
are evicted (least recently used first) to make room for the next image, under the cap."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from lazyimage import estargz, names
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2 as pb,
)
from lazyimage.snapshotter._proto.containerd.services.snapshots.v1 import (
    snapshots_pb2_grpc as pb_grpc,
)

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz
from tests.integration.agent.test_agent_snapshotter import _prepare_layers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LANDMARKS = {names.PREFETCH_LANDMARK, names.NO_PREFETCH_LANDMARK}
CAP = 8 << 20
STALL = 6.0  # seconds the proxy holds the fill's requests once the test is ready to remove


def _wait_for(what: str, condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds; the test's timeout is the only bound."""
    while not condition():
        time.sleep(0.1)


def _chunk_files(cache: Path) -> dict[str, int]:
    return {
        "sha256:" + p.name: p.stat().st_size
        for p in (cache / "sha256").glob("*/*")
        if not p.name.startswith(".")
    }


def _chunks(registry: RegistryServer, image: RemoteImage) -> dict[str, int]:
    """The image's chunks: digest -> uncompressed size."""
    chunks: dict[str, int] = {}
    for layer in image.layers:
        data = registry.blob_path(layer.digest).read_bytes()
        toc = estargz.open_toc(lambda o, n, d=data: d[o : o + n], len(data))
        for node in toc.nodes:
            if node.path in LANDMARKS:  # markers in the blob, not files of the layer
                continue
            chunks.update((c.digest, c.size) for c in node.chunks)
    return chunks


def _blob_gets(proxy: FaultProxy, digests: list[str]) -> list[int]:
    """Indexes in the proxy's request list of the range GETs of these blobs."""
    return [
        i
        for i, r in enumerate(proxy.requests)
        if r.method == "GET" and r.range and any(d in r.path for d in digests)
    ]


def test_removing_an_image_stops_its_fill_and_frees_its_chunks_first(
    registry: RegistryServer,
    python_image: TestImage,
    busybox_image: TestImage,
    agent_factory: Any,
) -> None:
    removed = push_estargz(python_image, registry, "lazy/python")
    kept = push_estargz(busybox_image, registry, "lazy/busybox")
    removed_blobs = [layer.digest for layer in removed.layers]
    kept_chunks = _chunks(registry, kept)
    kept_bytes = sum(kept_chunks.values())
    assert kept_bytes < CAP // 2
    with FaultProxy(registry.host) as proxy:
        agent = agent_factory(
            [proxy.host],
            extra=[
                "--cache-size", str(CAP),
                "--background-quiet", "0",
                "--prefetch-bandwidth", str(1 << 20),  # a fill that lasts, to remove it midway
                "--stall-timeout", "60",  # a held request is waited for, not asked again
            ],
        )  # fmt: skip
        cache = agent.state_dir / "cache"
        moved = RemoteImage(removed.ref.replace(registry.host, proxy.host), removed.layers)
        socket = agent.base / "run" / "snapshotter.sock"
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = pb_grpc.SnapshotsStub(channel)
            chain = _prepare_layers(stub, moved)

            # The fill has filled the cache so far that the next image needs some of its
            # room, and goes on (the layers hold more than the cap).
            _wait_for("a full cache", lambda: sum(_chunk_files(cache).values()) > CAP - kept_bytes)
            assert not all(layer["fillDone"] for layer in agent.request("GET", "/v1/layers"))
            # Hold the fill's next requests: once both of its slots wait on the proxy, the
            # agent asks for nothing more of these blobs by itself until they are answered.
            held = proxy.add(
                Fault.stall(STALL), method="GET", path="|".join(removed_blobs), times=None
            )
            _wait_for("two held requests", lambda: held.applied >= 2)

            # containerd's garbage collector removes leaf first.
            for name in reversed(chain):
                stub.Remove(pb.RemoveSnapshotRequest(snapshotter="lazyimage", key=name))
            assert agent.request("GET", "/v1/layers") == []
            # A request the agent sent before the Remove returned reaches the proxy's list
            # within this; a fill still running asks for more only once its held requests
            # are answered, STALL seconds after they came.
            time.sleep(1)
            after_remove = len(proxy.requests)
        removed_files = _chunk_files(cache)
        assert sum(removed_files.values()) <= CAP

        # Had the fill gone on, the held requests would have been answered by now and
        # the next ones asked.
        time.sleep(STALL + 2)
        proxy.clear()

        # The next image: its layers are filled in, which needs room.
        for layer in kept.layers:
            agent.mount(kept.ref.replace(registry.host, proxy.host), layer.digest, kept.toc(layer))
        _wait_for(
            "the kept image's fill",
            lambda: all(layer["fillDone"] for layer in agent.request("GET", "/v1/layers")),
        )
        late = [i for i in _blob_gets(proxy, removed_blobs) if i >= after_remove]
        assert late == [], [proxy.requests[i] for i in late]
        assert _blob_gets(proxy, [layer.digest for layer in kept.layers])

    files = _chunk_files(cache)
    assert sum(files.values()) <= CAP
    on_disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.name != ".lock")
    assert on_disk <= CAP
    assert agent.request("GET", "/status")["cache"]["bytes"] <= CAP
    # Least recently used first: the removed image's chunks made the room, and every chunk
    # of the kept image is there.
    assert kept_chunks.keys() <= files.keys(), sorted(kept_chunks.keys() - files.keys())[:5]
    evicted = removed_files.keys() - files.keys()
    assert evicted, "the removed image's chunks were not evicted"
    assert not any(re.search(r"\.tmp-", p.name) for p in cache.rglob("*"))
