"""The tree of a 100,000-entry TOC stays small, and building it does not go through a TOC.

The agent's budget is 200 MB RSS with such a layer mounted. A TOC tree of it takes about
100 MB (besides its JSON), the layer tree about 20 MB (of which 7 MB are chunk records);
built straight from the JSON, the tree's build peaks at about twice the JSON's size.
"""

from __future__ import annotations

import gc
import json
import tracemalloc

import pytest
from lazyimage.estargz import TOC, parse_toc_json
from lazyimage.layer import ROOT, LayerTree

from tests.unit.layer.helpers import loader_of_json

pytestmark = pytest.mark.timeout(120)

ENTRIES = 100_000
MB = 1 << 20


def synthetic_json(entries: int) -> tuple[bytes, int]:
    """TOC JSON of ``entries`` entries, directories of 19 small files, each file one chunk;
    and the TOC's offset in its blob."""
    raw: list[dict[str, object]] = []
    offset = 100
    for d in range(entries // 20):
        directory = f"usr/lib/python3.11/site-packages/package{d:05d}"
        raw.append({"name": directory + "/", "type": "dir", "mode": 0o755})
        for f in range(19):
            raw.append(
                {
                    "name": f"{directory}/module_{f:03d}.py",
                    "type": "reg",
                    "size": 2000,
                    "mode": 0o644,
                    "modtime": "2024-01-01T00:00:00Z",
                    "offset": offset,
                    "digest": "sha256:" + "ab" * 32,
                    "chunkDigest": "sha256:" + f"{d:05d}{f:03d}".ljust(64, "c"),
                }
            )
            offset += 900
    return json.dumps({"version": 1, "entries": raw}).encode(), offset + 100


def synthetic_toc(entries: int) -> TOC:
    data, toc_offset = synthetic_json(entries)
    return TOC(parse_toc_json(data), "sha256:" + "0" * 64, toc_offset)


def test_a_100k_entry_tree_costs_under_250_bytes_per_entry() -> None:
    toc = synthetic_toc(ENTRIES)
    assert len(toc.nodes) > ENTRIES
    gc.collect()
    tracemalloc.start()
    try:
        tree = LayerTree(toc)
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 25 * MB, f"tree takes {size / MB:.1f} MB"
    first = tree.children(ROOT)[0][1]
    assert tree.path(first) == "usr"
    module = tree.lookup(tree.lookup(tree.lookup(first, b"lib") or 0, b"python3.11") or 0, b"x")
    assert module is None
    del toc


def test_building_a_100k_entry_tree_peaks_near_twice_the_toc_json() -> None:
    data, toc_offset = synthetic_json(ENTRIES)
    loader = loader_of_json(data, toc_offset)
    json_size = len(data)
    del data
    gc.collect()
    tracemalloc.start()
    try:
        tree = LayerTree.from_loader(loader)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The JSON's bytes and its text, briefly; then the text and the tree's arrays. Through a
    # TOC tree the peak is about 4.5 times the JSON.
    assert peak < 2.6 * json_size, f"peak {peak / MB:.1f} MB for {json_size / MB:.1f} MB of JSON"
    assert tree.node_count > ENTRIES
    assert tree.path(tree.children(ROOT)[0][1]) == "usr"
