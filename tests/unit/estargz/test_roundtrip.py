"""Our writer's blobs read back by our reader: every case, every attribute, every byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from lazyimage import estargz, names

from tests.layercases import CASES, content_digest
from tests.unit.estargz.helpers import build_case

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_entry_reads_back(tmp_path: Path, case: str) -> None:
    built = build_case(tmp_path, case)
    toc = built.toc()
    assert toc.digest == built.result.toc_digest
    for item in built.items:
        node = toc.lookup(item.name)
        assert node is not None, item.name
        expected_type = "reg" if item.kind == "hardlink" else item.kind
        assert node.type == expected_type, item.name
        if item.kind == "hardlink":
            assert node is toc.lookup(item.link)
            assert node.nlink >= 2
            continue
        assert node.entry.mode & 0o7777 == item.mode, item.name
        assert (node.entry.uid, node.entry.gid) == (item.uid, item.gid)
        assert node.entry.xattrs == item.xattrs
        if item.kind == "symlink":
            assert node.entry.link_name == item.link
        if item.kind in ("char", "block"):
            assert (node.entry.dev_major, node.entry.dev_minor) == item.dev
        if item.kind == "reg":
            assert node.size == item.length
            data = b"".join(estargz.iter_file(node, built.read_at))
            assert "sha256:" + hashlib.sha256(data).hexdigest() == content_digest(item)


@pytest.mark.parametrize("case", sorted(CASES))
def test_blob_is_a_plain_gzip_tar_with_the_same_files(tmp_path: Path, case: str) -> None:
    built = build_case(tmp_path, case)
    raw = gzip.decompress(built.blob)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == built.result.diff_id
    assert len(raw) == built.result.uncompressed_size
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert names.TOC_TAR_NAME in members
    for item in built.items:
        assert item.name in members, item.name


def test_toc_and_footer_cost_one_read_for_a_small_layer(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    built.toc()
    assert len(built.reads) == 1


def test_toc_beyond_the_tail_costs_exactly_two_reads(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    estargz.open_toc(built.read_at, len(built.blob), tail_size=64)
    assert len(built.reads) == 2


def test_large_files_are_chunked_at_the_chunk_size(tmp_path: Path) -> None:
    built = build_case(tmp_path, "chunk-boundaries")
    toc = built.toc()
    sizes = {
        path: [c.size for c in node.chunks]
        for path, node in toc.files()
        if node.type == "reg" and node.size
    }
    chunk = names.DEFAULT_CHUNK_SIZE
    assert sizes["exact"] == [chunk]
    assert sizes["plus-one"] == [chunk, 1]
    assert sizes["minus-one"] == [chunk - 1]
    assert sizes["three-chunks"] == [chunk, chunk, 7]
    node = toc.lookup("three-chunks")
    assert node is not None
    assert toc.chunk_at(node, chunk * 2 + 3).chunk_offset == chunk * 2
    assert [c.chunk_offset for c in toc.chunks_for_range(node, chunk - 1, 2)] == [0, chunk]


def test_custom_chunk_size(tmp_path: Path) -> None:
    built = build_case(tmp_path, "chunk-boundaries", estargz.BuildOptions(chunk_size=1 << 20))
    node = built.toc().lookup("plus-one")
    assert node is not None
    assert len(node.chunks) == 5


def test_without_priorities_the_no_prefetch_landmark_comes_first(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    toc = built.toc()
    assert toc.has_no_prefetch_landmark
    assert toc.prefetch_zone == 0
    assert built.result.prefetch_zone == 0


def test_prioritized_files_lead_and_end_at_the_landmark(tmp_path: Path) -> None:
    order = ["data/with-xattrs", "etc/hostname.bak", "bin/*"]
    built = build_case(tmp_path, "everything", estargz.BuildOptions(prioritized=order))
    toc = built.toc()
    zone = toc.prefetch_zone
    assert zone > 0 and zone == built.result.prefetch_zone
    data_names = [e.name for e in toc.entries if e.offset]
    landmark = data_names.index(names.PREFETCH_LANDMARK)
    # The hardlink's target comes before the hardlink, in the requested order.
    assert data_names[:landmark] == ["data/with-xattrs", "etc/hostname", "bin/tool"]
    for path in ("data/with-xattrs", "etc/hostname", "bin/tool"):
        node = toc.lookup(path)
        assert node is not None
        assert all(c.end <= zone for c in node.chunks)
    # Parent directories of prioritized files come before them in the tar stream.
    entry_names = [e.name for e in toc.entries]
    assert entry_names.index("data/") < entry_names.index("data/with-xattrs")


def test_zstd_and_plain_inputs_give_the_same_toc(tmp_path: Path) -> None:
    import zstandard

    plain = build_case(tmp_path, "everything")
    tar = tmp_path / "everything.tar"
    for name, data in (
        ("gz", gzip.compress(tar.read_bytes())),
        ("zst", zstandard.ZstdCompressor().compress(tar.read_bytes())),
    ):
        source = tmp_path / f"layer.{name}"
        source.write_bytes(data)
        with open(tmp_path / f"out.{name}", "wb") as out:
            result = estargz.build(source, out)
        assert result.toc_digest == plain.result.toc_digest
        assert result.source_diff_id == plain.result.source_diff_id
