"""Malformed blobs, footers and TOCs give FormatError / VerificationError, never a crash."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from lazyimage import estargz
from lazyimage.errors import FormatError, VerificationError
from lazyimage.estargz._gzip import deflate_member

from tests.unit.estargz.helpers import build_case

pytestmark = pytest.mark.timeout(60)


def _blob_with_toc(toc_json: bytes, data: bytes = b"") -> bytes:
    """A blob of ``data`` followed by a TOC member holding ``toc_json`` and a footer."""
    header = tarfile.TarInfo("stargz.index.json")
    header.size = len(toc_json)
    tar = header.tobuf(tarfile.USTAR_FORMAT) + toc_json + bytes(-len(toc_json) % 512 + 1024)
    member = deflate_member(tar, 6)
    return data + member + estargz.make_footer(len(data))


def _open(blob: bytes, **kwargs: str) -> estargz.TOC:
    return estargz.open_toc(lambda o, n: blob[o : o + n], len(blob), **kwargs)


def _toc(entries: list[dict[str, object]]) -> bytes:
    return json.dumps({"version": 1, "entries": entries}).encode()


def test_footer_round_trip_and_legacy_footer() -> None:
    footer = estargz.make_footer(0x1234)
    assert len(footer) == 51
    assert estargz.parse_footer(footer) == (0x1234, 51)
    legacy = (
        b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x16\x00"
        + b"%016xSTARGZ" % 0xABC
        + b"\x01\x00\x00\xff\xff"
        + bytes(8)
    )
    assert len(legacy) == 47
    assert estargz.parse_footer(b"junk" + legacy) == (0xABC, 47)


@pytest.mark.parametrize(
    "tail",
    [b"", b"\x1f\x8b", bytes(51), b"x" * 100, estargz.make_footer(5)[:-1] + b"\x01"],
)
def test_bad_footers(tail: bytes) -> None:
    with pytest.raises(FormatError):
        estargz.parse_footer(tail)


def test_truncated_blob(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    with pytest.raises(FormatError):
        _open(built.blob[: len(built.blob) // 2])
    with pytest.raises(FormatError):
        _open(built.blob[:-10])


def test_footer_offset_past_the_end(tmp_path: Path) -> None:
    built = build_case(tmp_path, "empty-files")
    blob = built.blob[:-51] + estargz.make_footer(len(built.blob) + 100)
    with pytest.raises(FormatError, match="past the end"):
        _open(blob)


def test_footer_offset_into_the_middle_of_a_member(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    blob = built.blob[:-51] + estargz.make_footer(len(built.blob) - 200)
    with pytest.raises(FormatError):
        _open(blob)


def test_toc_that_is_not_json() -> None:
    with pytest.raises(FormatError, match="not valid JSON"):
        _open(_blob_with_toc(b"{not json"))


def test_toc_with_wrong_version_or_shape() -> None:
    for doc in (b'{"version": 2, "entries": []}', b"[]", b'{"version": 1}'):
        with pytest.raises(FormatError):
            _open(_blob_with_toc(doc))


def test_toc_digest_mismatch() -> None:
    blob = _blob_with_toc(_toc([]))
    with pytest.raises(VerificationError):
        _open(blob, expected_digest="sha256:" + "0" * 64)


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "a/..", "x\x00y"])
def test_names_that_leave_the_layer_are_rejected(name: str) -> None:
    with pytest.raises(FormatError):
        _open(_blob_with_toc(_toc([{"name": name, "type": "dir"}])))


def test_hardlink_to_outside_is_rejected() -> None:
    entries = [{"name": "a", "type": "hardlink", "linkName": "../../etc/shadow"}]
    with pytest.raises(FormatError):
        _open(_blob_with_toc(_toc(entries)))


def test_duplicate_offsets_are_rejected() -> None:
    data = deflate_member(b"x" * 600, 6)
    digest = "sha256:" + "1" * 64
    entries = [
        {"name": "a", "type": "reg", "size": 1, "offset": 1, "chunkDigest": digest},
        {"name": "b", "type": "reg", "size": 1, "offset": 1, "chunkDigest": digest},
    ]
    with pytest.raises(FormatError, match="not increasing"):
        _open(_blob_with_toc(_toc(entries), b"\0" + data))


def test_landmark_in_the_wrong_place() -> None:
    digest = "sha256:" + "1" * 64
    data = b"\0" + deflate_member(b"x" * 600, 6) + deflate_member(b"y" * 600, 6)
    landmark = {"type": "reg", "size": 1, "chunkDigest": digest}
    cases = [
        # not at the root
        [{"name": "sub/.prefetch.landmark", "offset": 1, **landmark}],
        # both landmarks
        [
            {"name": ".prefetch.landmark", "offset": 1, **landmark},
            {"name": ".no.prefetch.landmark", "offset": 30, **landmark},
        ],
        # the no-prefetch landmark after a file
        [
            {"name": "f", "type": "reg", "size": 1, "offset": 1, "chunkDigest": digest},
            {"name": ".no.prefetch.landmark", "offset": 30, **landmark},
        ],
        # a landmark that is not a one-byte file
        [{"name": ".prefetch.landmark", "type": "dir"}],
    ]
    for entries in cases:
        with pytest.raises(FormatError, match="landmark"):
            _open(_blob_with_toc(_toc(entries), data))


def test_file_without_chunk_digest_is_rejected() -> None:
    entries = [{"name": "a", "type": "reg", "size": 5, "offset": 1}]
    with pytest.raises(FormatError, match="chunkDigest"):
        _open(_blob_with_toc(_toc(entries), b"\0" + deflate_member(b"hello", 6)))


def test_chunks_that_do_not_cover_the_file_are_rejected() -> None:
    digest = "sha256:" + "1" * 64
    entries = [
        {
            "name": "a",
            "type": "reg",
            "size": 10,
            "offset": 1,
            "chunkSize": 4,
            "chunkDigest": digest,
        },
        {
            "name": "a",
            "type": "chunk",
            "offset": 20,
            "chunkOffset": 4,
            "chunkSize": 4,
            "chunkDigest": digest,
        },
    ]
    with pytest.raises(FormatError, match="cover"):
        _open(_blob_with_toc(_toc(entries), bytes(40)))


def test_tampered_chunk_fails_verification(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    toc = built.toc()
    node = toc.lookup("etc/hostname")
    assert node is not None
    chunk = node.chunks[0]
    # A valid gzip member with a correct CRC, but different content of the same length.
    forged = deflate_member(b"forged!!!!\n" + bytes(512 - 11), 6)
    blob = built.blob[: chunk.offset] + forged
    with pytest.raises(VerificationError):
        estargz.verify_chunk(chunk, blob[chunk.offset : chunk.offset + len(forged)])


def test_corrupt_gzip_in_a_chunk(tmp_path: Path) -> None:
    built = build_case(tmp_path, "everything")
    node = built.toc().lookup("bin/tool")
    assert node is not None
    chunk = node.chunks[0]
    data = bytearray(built.blob[chunk.offset : chunk.end])
    data[20] ^= 0xFF
    with pytest.raises((FormatError, VerificationError)):
        estargz.verify_chunk(chunk, bytes(data))


def test_not_a_tar_layer(tmp_path: Path) -> None:
    source = tmp_path / "layer"
    source.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(FormatError):
        estargz.build(source, io.BytesIO())


def test_tar_with_escaping_names_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "evil.tar"
    with tarfile.open(source, "w") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(FormatError, match=r"\.\."):
        estargz.build(source, io.BytesIO())
