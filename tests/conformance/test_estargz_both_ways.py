"""Conformance with the reference Go ``estargz`` package, both ways.

Our writer's blobs must open, pass ``VerifyTOC`` and read back every chunk in the reference;
the reference's blobs must open and verify in our reader with the same file contents.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from lazyimage import estargz, names
from lazyimage.estargz import clean_name

from tests.fixtures.gotools import EstargzRef, EstargzRefError
from tests.layercases import CASES, Item, content_digest, write_sparse_zero_tar, write_tar

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(300)]


def _reference_entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {clean_name(e["name"]): e for e in report["entries"]}


def _check_item(item: Item, entry: dict[str, Any]) -> None:
    assert entry["type"] == item.kind, item.name
    if item.kind == "hardlink":
        assert clean_name(entry["linkName"]) == item.link
        return
    assert entry["mode"] & 0o7777 == item.mode, item.name
    assert (entry["uid"], entry["gid"]) == (item.uid, item.gid), item.name
    xattrs = {k: base64.b64decode(v) for k, v in (entry.get("xattrs") or {}).items()}
    assert xattrs == item.xattrs, item.name
    if item.kind == "symlink":
        assert entry["linkName"] == item.link
    if item.kind in ("char", "block"):
        assert (entry["devMajor"], entry["devMinor"]) == item.dev
    if item.kind == "reg":
        assert entry["size"] == item.length, item.name
        assert entry["digest"] == content_digest(item), item.name


def _build_ours(tmp_path: Path, items: list[Item], **options: Any) -> tuple[Path, str]:
    tar = write_tar(items, tmp_path / "layer.tar")
    blob = tmp_path / "ours.esgz"
    with open(blob, "wb") as out:
        result = estargz.build(tar, out, estargz.BuildOptions(**options))
    return blob, result.toc_digest


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_blobs_verify_in_the_reference(
    tmp_path: Path, case: str, estargz_ref: EstargzRef
) -> None:
    items = CASES[case]()
    blob, toc_digest = _build_ours(tmp_path, items)
    report = estargz_ref.verify(blob, toc_digest)
    assert report["tocDigest"] == toc_digest
    entries = _reference_entries(report)
    for item in items:
        _check_item(item, entries[item.name])
    assert report["noPrefetchLandmark"] is True


def test_our_prioritized_blob_in_the_reference(tmp_path: Path, estargz_ref: EstargzRef) -> None:
    items = CASES["everything"]()
    blob, toc_digest = _build_ours(
        tmp_path, items, prioritized=["bin/tool", "etc/*"], chunk_size=1 << 20
    )
    report = estargz_ref.verify(blob, toc_digest)
    assert report["prefetchLandmark"] is True
    assert report["landmarkOffset"] > 0
    entries = _reference_entries(report)
    for item in items:
        _check_item(item, entries[item.name])


def test_a_wrong_toc_digest_is_refused_by_the_reference(
    tmp_path: Path, estargz_ref: EstargzRef
) -> None:
    blob, _ = _build_ours(tmp_path, CASES["symlinks"]())
    with pytest.raises(EstargzRefError, match=r"(?i)digest|verif"):
        estargz_ref.verify(blob, "sha256:" + "0" * 64)


def _read_all(blob: Path, toc_digest: str, items: list[Item]) -> estargz.TOC:
    data = blob.read_bytes()

    def read_at(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    toc = estargz.open_toc(read_at, len(data), expected_digest=toc_digest)
    for item in items:
        node = toc.lookup(item.name)
        assert node is not None, item.name
        if item.kind == "hardlink":
            assert node is toc.lookup(item.link)
            continue
        assert node.type == item.kind, item.name
        assert node.entry.mode & 0o7777 == item.mode, item.name
        assert node.entry.xattrs == item.xattrs, item.name
        if item.kind == "reg":
            content = b"".join(estargz.iter_file(node, read_at))
            assert "sha256:" + hashlib.sha256(content).hexdigest() == content_digest(item)
    return toc


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_blobs_verify_in_ours(tmp_path: Path, case: str, estargz_ref: EstargzRef) -> None:
    items = CASES[case]()
    tar = write_tar(items, tmp_path / "layer.tar")
    blob = tmp_path / "reference.esgz"
    built = estargz_ref.build(tar, blob)
    toc = _read_all(blob, built["tocDigest"], items)
    assert toc.has_no_prefetch_landmark


def test_reference_prioritized_and_chunked_blob_in_ours(
    tmp_path: Path, estargz_ref: EstargzRef
) -> None:
    items = CASES["everything"]()
    tar = write_tar(items, tmp_path / "layer.tar")
    blob = tmp_path / "reference.esgz"
    built = estargz_ref.build(
        tar, blob, chunk_size=1 << 20, prioritized=["bin/tool", "etc/hostname"]
    )
    toc = _read_all(blob, built["tocDigest"], items)
    assert toc.prefetch_zone > 0
    for path in ("bin/tool", "etc/hostname"):
        node = toc.lookup(path)
        assert node is not None and all(c.end <= toc.prefetch_zone for c in node.chunks)
    zeros = toc.lookup("data/zeros")
    assert zeros is not None and len(zeros.chunks) == 10


def test_reference_blob_with_the_legacy_footer(tmp_path: Path, estargz_ref: EstargzRef) -> None:
    items = CASES["everything"]()
    tar = write_tar(items, tmp_path / "layer.tar")
    blob = tmp_path / "legacy.esgz"
    built = estargz_ref.legacy_build(tar, blob)
    data = blob.read_bytes()
    assert estargz.parse_footer(data[-64:])[1] == estargz.LEGACY_FOOTER_SIZE
    _read_all(blob, built["tocDigest"], items)


def test_footer_offsets_agree(tmp_path: Path, estargz_ref: EstargzRef) -> None:
    blob, _ = _build_ours(tmp_path, CASES["everything"]())
    data = blob.read_bytes()
    offset, size = estargz.parse_footer(data[-51:])
    assert estargz_ref.footer(blob) == {"tocOffset": offset, "footerSize": size}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_file_over_8_gib_both_ways(tmp_path: Path, estargz_ref: EstargzRef) -> None:
    size = (8 << 30) + 4097
    tar = write_sparse_zero_tar(tmp_path / "huge.tar", "huge.bin", size)
    assert tar.stat().st_blocks * 512 < 1 << 20  # sparse on disk
    item = Item("huge.bin", "reg", size=size)

    ours = tmp_path / "ours.esgz"
    with open(ours, "wb") as out:
        result = estargz.build(tar, out, estargz.BuildOptions(level=1))
    report = estargz_ref.verify(ours, result.toc_digest)
    entry = _reference_entries(report)["huge.bin"]
    assert entry["size"] == size
    assert entry["digest"] == content_digest(item)
    ours.unlink()

    reference = tmp_path / "reference.esgz"
    built = estargz_ref.build(tar, reference, level=1)
    toc = _read_all(reference, built["tocDigest"], [item])
    node = toc.lookup("huge.bin")
    assert node is not None
    assert len(node.chunks) == -(-size // names.DEFAULT_CHUNK_SIZE)
