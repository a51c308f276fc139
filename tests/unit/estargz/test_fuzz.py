"""Bounded fuzzing of the footer and TOC parsers: every input parses or raises FormatError."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lazyimage import estargz
from lazyimage.errors import FormatError, VerificationError

from tests.unit.estargz.helpers import build_case

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "name",
        "type",
        "size",
        "offset",
        "chunkOffset",
        "chunkSize",
        "chunkDigest",
        "linkName",
        "mode",
        "xattrs",
        "innerOffset",
        "digest",
        "modtime",
        "devMajor",
    ]
)
_types = st.sampled_from(
    ["dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk", "x"]
)
_entry = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=12), "type": _types},
    optional={"extra": st.dictionaries(_field_names, _json_values, max_size=4)},
).map(lambda e: {**{k: v for k, v in e.items() if k != "extra"}, **e.get("extra", {})})


@FUZZ
@given(st.binary(max_size=200))
def test_footer_parser(tail: bytes) -> None:
    try:
        offset, size = estargz.parse_footer(tail)
    except FormatError:
        return
    assert size in (47, 51) and offset >= 0


@FUZZ
@given(st.binary(max_size=4000))
def test_toc_json_parser_on_bytes(data: bytes) -> None:
    try:
        entries = estargz.parse_toc_json(data)
        estargz.TOC(entries, "sha256:x", 1 << 40)
    except FormatError:
        pass


@FUZZ
@given(st.lists(_entry, max_size=8))
def test_toc_index_on_structured_entries(entries: list[dict[str, object]]) -> None:
    data = json.dumps({"version": 1, "entries": entries}).encode()
    with contextlib.suppress(FormatError):
        estargz.TOC(estargz.parse_toc_json(data), "sha256:x", 1 << 40)


class _Recorder:
    """A TOCSink that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def add_node(self, node_id: int, parent: int, path: str, entry: estargz.TOCEntry) -> None:
        self.events.append(("node", node_id, parent, path, entry))

    def set_entry(self, node_id: int, entry: estargz.TOCEntry) -> None:
        self.events.append(("entry", node_id, entry))

    def add_child(self, dir_id: int, path: str, node_id: int) -> None:
        self.events.append(("child", dir_id, path, node_id))

    def add_chunk(self, node_id: int, entry: estargz.TOCEntry, size: int) -> None:
        self.events.append(("chunk", node_id, entry, size))


def _walk(data: bytes, streaming: bool) -> tuple[object, ...]:
    try:
        if streaming:
            sink, info = estargz.walk_toc_json(data, "sha256:x", 1 << 40, _Recorder)
            return ("ok", sink.events, info)
        sink = _Recorder()
        walker = estargz.TOCWalker(sink, 1 << 40)
        for index, entry in enumerate(estargz.parse_toc_json(data)):
            walker.add(entry, index)
        return ("ok", sink.events, walker.finish("sha256:x"))
    except FormatError as exc:
        return ("error", str(exc))


@FUZZ
@given(
    st.lists(_entry, max_size=8),
    st.sampled_from(["plain", "entry under another key", "entry inside an entry", "version"]),
)
def test_walking_while_decoding_is_walking_the_parsed_entries(
    entries: list[dict[str, object]], shape: str
) -> None:
    doc: dict[str, Any] = {"version": 1, "entries": entries}
    if shape == "entry under another key":
        doc["more"] = {"name": "x", "type": "reg"}
    elif shape == "entry inside an entry" and entries:
        entries[-1]["note"] = {"name": "y", "type": "dir"}
    elif shape == "version":
        doc["version"] = 2
    data = json.dumps(doc).encode()
    assert _walk(data, streaming=True) == _walk(data, streaming=False)


@FUZZ
@given(data=st.data())
def test_mutated_blob_tails(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    blob = _sample_blob(tmp_path_factory.getbasetemp())
    tail = bytearray(blob[-3000:])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(tail) - 1))
        tail[position] = data.draw(st.integers(0, 255))
    mutated = blob[:-3000] + bytes(tail)
    with contextlib.suppress(FormatError, VerificationError):
        estargz.open_toc(lambda o, n: mutated[o : o + n], len(mutated))


_SAMPLE: dict[str, bytes] = {}


def _sample_blob(base: Path) -> bytes:
    if "blob" not in _SAMPLE:
        directory = base / "fuzz-sample"
        directory.mkdir(exist_ok=True)
        _SAMPLE["blob"] = build_case(directory, "whiteouts").blob
    return _SAMPLE["blob"]
