"""A conversion whose disk is full, read-only or not writable for it: a message naming the
directory and exit code 7, never a traceback, and nothing half-written left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lazyimage.oci import OCILayout

from tests.fixtures.images import TestImage
from tests.integration.convert.cli import lazyimage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# root, but held to the permission bits like anyone else
_WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@contextmanager
def _tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``path``: smaller than the converted busybox image."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=1m", *options]), "tmpfs", str(path)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=30)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def test_a_full_destination(busybox_image: TestImage, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small") as small:
        layout = OCILayout.create(small / "out")
        index = (layout.root / "index.json").read_bytes()
        result = lazyimage("convert", busybox_image.ref, f"oci:{layout.root}")
        assert result.code == 7, result.err
        assert f"oci:{layout.root}: cannot store blob" in result.err
        assert "No space left on device" in result.err
        _no_traceback(result.err)
        # Atomic writes: no partial file, the index as it was, every blob whole.
        assert not [name for name in _files(small) if ".tmp-" in name]
        assert (layout.root / "index.json").read_bytes() == index
        for blob in (layout.root / "blobs" / "sha256").iterdir():
            layout.read_blob(f"sha256:{blob.name}")  # verifies the digest


def test_full_temporary_files(busybox_image: TestImage, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "tmp") as tmp:
        result = lazyimage(
            "convert",
            busybox_image.ref,
            f"oci:{tmp_path / 'out'}",
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        assert result.code == 7, result.err
        assert f"working files under {tmp}: No space left on device" in result.err
        assert "TMPDIR" in result.err
        assert any(f"layer {x.digest}" in result.err for x in busybox_image.manifest.layers)
        _no_traceback(result.err)
        assert _files(tmp) == []  # the temporary files are gone
    assert (OCILayout(tmp_path / "out").index()).manifests == []


def test_a_read_only_destination(busybox_image: TestImage, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro") as read_only:
        result = lazyimage("convert", busybox_image.ref, f"oci:{read_only / 'out'}")
        assert result.code == 7, result.err
        assert f"oci:{read_only / 'out'}: cannot create the layout: Read-only file system" in (
            result.err
        )
        _no_traceback(result.err)


def test_a_destination_it_may_not_write(busybox_image: TestImage, tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "out")
    blobs = layout.root / "blobs" / "sha256"
    blobs.chmod(0o555)
    try:
        result = lazyimage(
            "convert", busybox_image.ref, f"oci:{layout.root}", prefix=_WITHOUT_OVERRIDE
        )
    finally:
        blobs.chmod(0o755)
    assert result.code == 7, result.err
    assert f"oci:{layout.root}: cannot store" in result.err
    assert "Permission denied" in result.err
    _no_traceback(result.err)
    assert list(blobs.iterdir()) == []
