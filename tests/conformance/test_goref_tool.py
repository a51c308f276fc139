"""The Go reference tools work: estargz-ref builds, verifies and reads footers the way the
conformance tests rely on, and the stargz-snapshotter binaries run.

Timeouts apply to the test bodies only (func_only): a first, cold build of a tool happens in
the session fixture and is bounded by gotools.BUILD_TIMEOUT.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.fixtures.gotools import EstargzRef, EstargzRefError

pytestmark = [pytest.mark.integration, pytest.mark.conformance]

CHUNK = 64 * 1024
MTIME = 1_700_000_000
HELLO = b"hello, estargz\n"
# 300 KiB of non-repeating bytes: five 64 KiB chunks, the last one partial.
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(9600))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_tar(path: Path) -> None:
    """A dir, two files and a symlink, as a plain tar."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("app")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tf.addfile(d)
        for name, content in (("app/hello.txt", HELLO), ("app/data.bin", DATA)):
            f = tarfile.TarInfo(name)
            f.size, f.mode, f.mtime, f.uid, f.gid = len(content), 0o644, MTIME, 1000, 1000
            tf.addfile(f, io.BytesIO(content))
        s = tarfile.TarInfo("app/link")
        s.type, s.linkname, s.mode, s.mtime = tarfile.SYMTYPE, "hello.txt", 0o777, MTIME
        tf.addfile(s)


@pytest.fixture
def layer_tar(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar"
    write_tar(path)
    return path


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """verify's entries keyed by name, without the trailing slash of directories."""
    return {e["name"].rstrip("/"): e for e in result["entries"]}


@pytest.mark.timeout(120, func_only=True)
def test_version_is_pinned(estargz_ref: EstargzRef) -> None:
    assert estargz_ref.version()["estargz"] == "v0.18.2"


@pytest.mark.timeout(120, func_only=True)
def test_build_then_verify(estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path) -> None:
    blob = tmp_path / "layer.esgz"
    built = estargz_ref.build(layer_tar, blob, chunk_size=CHUNK, prioritized=["app/hello.txt"])
    assert built["tocDigest"].startswith("sha256:")
    assert built["size"] == blob.stat().st_size
    # The blob is one valid gzip stream of many members; its content gives the DiffID.
    uncompressed = gzip.decompress(blob.read_bytes())
    assert built["diffID"] == sha256(uncompressed)
    assert built["uncompressedSize"] == len(uncompressed)

    result = estargz_ref.verify(blob, toc_digest=built["tocDigest"])
    assert result["tocDigest"] == built["tocDigest"]
    entries = by_name(result)
    assert set(entries) == {
        "app",
        "app/hello.txt",
        "app/data.bin",
        "app/link",
        ".prefetch.landmark",
    }

    assert entries["app"]["type"] == "dir"
    assert entries["app"]["mode"] & 0o777 == 0o755
    hello, data = entries["app/hello.txt"], entries["app/data.bin"]
    assert (hello["type"], hello["size"], hello["digest"]) == ("reg", len(HELLO), sha256(HELLO))
    assert (data["size"], data["digest"], data["chunks"]) == (len(DATA), sha256(DATA), 5)
    assert (data["uid"], data["gid"], data["mode"] & 0o777) == (1000, 1000, 0o644)
    assert data["modtime"] == "2023-11-14T22:13:20Z"
    assert data["xattrs"] == {}
    assert entries["app/link"]["type"] == "symlink"
    assert entries["app/link"]["linkName"] == "hello.txt"

    # The prioritized file comes first, then the landmark, which holds the byte 0x0f.
    regs = [e["name"] for e in result["entries"] if e["type"] == "reg"]
    assert regs[:2] == ["app/hello.txt", ".prefetch.landmark"]
    assert entries[".prefetch.landmark"]["digest"] == sha256(b"\x0f")
    assert result["prefetchLandmark"] is True
    assert result["noPrefetchLandmark"] is False
    assert 0 < result["landmarkOffset"] < built["size"]


@pytest.mark.timeout(120, func_only=True)
def test_default_build_has_no_prefetch_landmark(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    blob = tmp_path / "layer.esgz"
    built = estargz_ref.build(layer_tar, blob)
    result = estargz_ref.verify(blob)  # no digest given: the helper reports the TOC's own
    assert result["tocDigest"] == built["tocDigest"]
    assert result["noPrefetchLandmark"] is True
    assert result["prefetchLandmark"] is False
    assert by_name(result)["app/data.bin"]["chunks"] == 1  # under the 4 MiB default chunk


@pytest.mark.timeout(120, func_only=True)
def test_verify_rejects_a_wrong_toc_digest(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    blob = tmp_path / "layer.esgz"
    built = estargz_ref.build(layer_tar, blob)
    wrong = sha256(b"not the TOC")
    assert wrong != built["tocDigest"]
    with pytest.raises(EstargzRefError) as excinfo:
        estargz_ref.verify(blob, toc_digest=wrong)
    assert excinfo.value.returncode == 1
    assert "invalid TOC JSON" in excinfo.value.stderr


@pytest.mark.timeout(120, func_only=True)
def test_verify_rejects_corrupt_file_content(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    """Flip bytes inside app/data.bin's compressed chunks: the TOC still verifies, the
    content read does not."""
    blob = tmp_path / "layer.esgz"
    built = estargz_ref.build(layer_tar, blob, chunk_size=CHUNK, parallelism=1)
    raw = bytearray(blob.read_bytes())
    start = estargz_ref.footer(blob)["tocOffset"] // 2  # the middle of data.bin's members
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    bad = tmp_path / "bad.esgz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(EstargzRefError) as excinfo:
        estargz_ref.verify(bad, toc_digest=built["tocDigest"])
    assert "app/data.bin" in excinfo.value.stderr


@pytest.mark.timeout(120, func_only=True)
def test_footer(estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path) -> None:
    blob = tmp_path / "layer.esgz"
    estargz_ref.build(layer_tar, blob)
    footer = estargz_ref.footer(blob)
    assert footer["footerSize"] == 51
    tail = blob.read_bytes()[-51:]
    # FEXTRA subfield 'SG', 22 bytes: the TOC offset in 16 lower-case hex digits + STARGZ.
    assert tail[12:16] == b"SG\x16\x00"
    assert tail[16:38] == b"%016xSTARGZ" % footer["tocOffset"]


@pytest.mark.timeout(120, func_only=True)
def test_legacy_build_has_a_47_byte_footer(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    blob = tmp_path / "legacy.stargz"
    built = estargz_ref.legacy_build(layer_tar, blob, chunk_size=CHUNK)
    footer = estargz_ref.footer(blob)
    assert footer["footerSize"] == 47
    assert blob.read_bytes()[-47:][10:34] == b"\x16\x00%016xSTARGZ" % footer["tocOffset"]
    result = estargz_ref.verify(blob, toc_digest=built["tocDigest"])
    assert by_name(result)["app/data.bin"]["digest"] == sha256(DATA)
    assert built["diffID"] == sha256(gzip.decompress(blob.read_bytes()))


@pytest.mark.timeout(120, func_only=True)
def test_build_reads_gzip_and_zstd_input(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    """With parallelism pinned, the same tar gives the same blob whatever its compression."""
    plain = estargz_ref.build(layer_tar, tmp_path / "plain.esgz", parallelism=1)
    gz = tmp_path / "layer.tar.gz"
    gz.write_bytes(gzip.compress(layer_tar.read_bytes()))
    zst = tmp_path / "layer.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(layer_tar.read_bytes()))
    for src in (gz, zst):
        out = tmp_path / (src.name + ".esgz")
        assert estargz_ref.build(src, out, parallelism=1) == plain
        assert out.read_bytes() == (tmp_path / "plain.esgz").read_bytes()


@pytest.mark.timeout(120, func_only=True)
def test_min_chunk_size_blobs_are_rejected_by_the_reference_verifier(
    estargz_ref: EstargzRef, layer_tar: Path, tmp_path: Path
) -> None:
    """Pins a limit of estargz v0.18.2: Verifiers keys digests by gzip member offset, so
    entries sharing a member (innerOffset) fail verification, even in blobs it built itself."""
    blob = tmp_path / "packed.esgz"
    built = estargz_ref.build(layer_tar, blob, chunk_size=CHUNK, min_chunk_size=1 << 20)
    with pytest.raises(EstargzRefError, match="found twice"):
        estargz_ref.verify(blob, toc_digest=built["tocDigest"])


@pytest.mark.timeout(60, func_only=True)
def test_usage_errors_exit_2(estargz_ref: EstargzRef, tmp_path: Path) -> None:
    with pytest.raises(EstargzRefError) as excinfo:
        estargz_ref.footer(tmp_path / "missing.esgz")
    assert excinfo.value.returncode == 1
    proc = subprocess.run(
        [str(estargz_ref.path), "build", "only-one-arg"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_prioritized_names_with_commas_are_refused(tmp_path: Path) -> None:
    ref = EstargzRef(tmp_path / "never-run")
    with pytest.raises(ValueError, match="comma"):
        ref.build(tmp_path / "a.tar", tmp_path / "b", prioritized=["a,b"])


@pytest.mark.timeout(60, func_only=True)
def test_ctr_remote_runs(ctr_remote: Path) -> None:
    proc = subprocess.run(
        [str(ctr_remote), "images", "convert", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--estargz" in proc.stdout
    proc = subprocess.run(
        [str(ctr_remote), "images", "rpull", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--snapshotter" in proc.stdout


@pytest.mark.timeout(60, func_only=True)
def test_stargz_grpc_runs(stargz_grpc: Path) -> None:
    proc = subprocess.run(
        [str(stargz_grpc), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert proc.stdout.split() == ["containerd-stargz-grpc", "v0.18.2"]
