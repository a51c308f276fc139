"""The tree built while the TOC's JSON is decoded is the tree of the parsed TOC, on random
TOCs that are mostly valid: implicit and repeated directories, whiteouts, opaque markers,
hardlinks, chunked files, landmarks; and the same error when one is not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lazyimage.layer import LayerTree

from tests.unit.layer.helpers import loader_of_json, observe

pytestmark = pytest.mark.timeout(120)

_NAMES = [
    "a",
    "b",
    "a/x",
    "a/y",
    "b/c/d",
    ".wh.a",
    "a/.wh.x",
    "a/.wh..wh..opq",
    "stargz.index.json",
    "a/stargz.index.json",
    "./a/z",
    "c/",
    "d\udcff",
    "x/y/z",
]
_TOC_OFFSET = 1 << 20


@st.composite
def _toc_json(draw: st.DrawFn) -> bytes:
    entries: list[dict[str, object]] = []
    offset = 1
    if draw(st.booleans()):
        landmark = draw(st.sampled_from([".prefetch.landmark", ".no.prefetch.landmark"]))
        entries.append(
            {"name": landmark, "type": "reg", "size": 1, "offset": offset, "chunkDigest": "x"}
        )
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["dir", "reg", "reg", "symlink", "hardlink", "char"]))
        entry: dict[str, object] = {"name": draw(st.sampled_from(_NAMES)), "type": kind}
        entry["mode"] = draw(st.sampled_from([0o755, 0o644, 0o4755]))
        entry["modtime"] = draw(st.sampled_from(["", "2024-01-01T00:00:00Z"]))
        if kind in ("symlink", "hardlink"):
            entry["linkName"] = draw(st.sampled_from(_NAMES))
        if kind == "char":
            entry["devMajor"], entry["devMinor"] = 1, draw(st.integers(0, 3))
        if draw(st.integers(0, 9)) == 0:
            entry["xattrs"] = {"user.a": "MQ=="}
        entries.append(entry)
        size = draw(st.sampled_from([0, 3, 10])) if kind == "reg" else 0
        if not size:
            continue
        entry["size"] = size
        step = draw(st.sampled_from([3, 4, 10]))  # chunk size; 4 leaves a short last one
        shared = draw(st.booleans())  # the chunks in one gzip member
        for start in range(0, size, step):
            offset += 0 if shared and start else draw(st.sampled_from([1, 7]))
            chunk = entry if start == 0 else {"name": entry["name"], "type": "chunk"}
            chunk.update(offset=offset, chunkOffset=start, chunkDigest=f"sha256:{offset:064x}")
            if shared:
                chunk["innerOffset"] = start
            if start + step < size or draw(st.booleans()):
                chunk["chunkSize"] = min(step, size - start)
            if start:
                entries.append(chunk)
    return json.dumps({"version": 1, "entries": entries}).encode()


def _outcome(tree: LayerTree | None, error: Exception | None) -> object:
    return observe(tree) if tree is not None else (type(error), str(error))


@settings(max_examples=300, deadline=None)
@given(_toc_json())
def test_the_streamed_tree_is_the_tree_of_the_parsed_toc(data: bytes) -> None:
    loader = loader_of_json(data, _TOC_OFFSET)
    streamed = parsed = None
    streamed_error = parsed_error = None
    try:
        streamed = LayerTree.from_loader(loader)
    except Exception as exc:
        streamed_error = exc
    try:
        parsed = LayerTree(loader.toc())
    except Exception as exc:
        parsed_error = exc
    assert _outcome(streamed, streamed_error) == _outcome(parsed, parsed_error)
