"""Warm opens never reach the server in no_open mode; with round-trip opens, reads still don't.

Counted with the server's own FUSE operation counters, over 2,000 small files, read
directly on the FUSE mount and through an overlay whose lowerdir is the layer. The no_open
fast path is the default: these tests fail, not warn, if it is off, or if reads without an
open (file handle 0) no longer reach the right file (lazyimage's pyfuse3 patch).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.fusefs.harness import Mounts
from tests.integration.fusefs.layers import build_layer, small_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FILES = 2000


def _read_all(root: Path) -> int:
    total = 0
    for directory in sorted(root.iterdir()):
        for path in sorted(directory.iterdir()):
            with open(path, "rb") as f:
                total += len(f.read())
    return total


def test_no_open_reads_each_file_without_an_open(mounts: Mounts, tmp_path: Path) -> None:
    items = [item for item in small_files(40, per_dir=20) if item.kind == "reg"]
    blob = build_layer(items, tmp_path / "few.esgz")
    server = mounts.server()
    assert server.no_open
    layer = server.add("few", blob)

    for rounds in (1, 2):  # cold (the agent reads), then warm (the page cache answers)
        for item in items:
            with open(layer / item.name, "rb") as f:
                assert f.read() == item.data, item.name
        ops = server.stats()["ops"]
        # Only the first open reached the agent, answered ENOSYS: no_open mode from then on.
        assert ops["open"] == 1
        assert ops["release"] == 0
        if rounds == 1:
            cold_reads = ops["read"]
            assert cold_reads >= len(items)
    # A handful of warm reads can come from the kernel reclaiming pages meanwhile.
    assert ops["read"] - cold_reads <= len(items) // 10


@pytest.mark.parametrize("round_trip", [False, True], ids=["no_open", "open"])
@pytest.mark.parametrize("through_overlay", [False, True], ids=["fuse", "overlay"])
def test_warm_open_and_read(
    mounts: Mounts, tmp_path: Path, round_trip: bool, through_overlay: bool
) -> None:
    items = small_files(FILES)
    blob = build_layer(items, tmp_path / "small.esgz")
    server = mounts.server(open_round_trip=round_trip)
    assert server.no_open is not round_trip
    layer = server.add("small", blob)
    root = mounts.overlay([layer], writable=True) if through_overlay else layer

    assert _read_all(root) == FILES * 4096  # cold: every file is read once
    before = server.stats()
    assert before["ops"]["read"] >= FILES
    for _ in range(3):
        assert _read_all(root) == FILES * 4096
    after = server.stats()
    opens = after["ops"]["open"] - before["ops"]["open"]
    reads = after["ops"]["read"] - before["ops"]["read"]
    # A page cache dropped on open would send all 3 * FILES reads again. A handful can
    # come from the kernel reclaiming pages while other work runs on the machine.
    assert reads <= FILES // 100, reads
    assert after["chunk_reads"] - before["chunk_reads"] <= FILES // 100
    if round_trip:
        assert opens == 3 * FILES
    else:
        assert opens == 0
        assert after["ops"]["open"] == 1  # the one answered ENOSYS
