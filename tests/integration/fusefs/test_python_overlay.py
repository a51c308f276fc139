"""The python image's layers served lazily, stacked with real overlayfs, and used.

The merged tree must equal a plain unpack of the gzip layers (paths, modes, owners, link
targets, xattrs, contents), with the top layer's whiteouts and opaque directory applied by
overlayfs itself; python must run in a chroot of it; and the access recorder must have
seen the files python read.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.unpack import diff_trees, tree_manifest, unpack_layers
from tests.images import PYTHON_TOP
from tests.integration.fusefs.harness import Mounts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]

NAMES = ["base", "python", "top"]
PYTHON_CMD = ["/usr/bin/python3", "-c", 'import json, asyncio, email; print("ok")']
JSON_PYC = "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"
ENCODINGS_PYC = "usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc"


def _mount_python(mounts: Mounts, blobs: list[Path]) -> tuple[list[Path], Path]:
    server = mounts.server()
    layers = [server.add(name, blob) for name, blob in zip(NAMES, blobs, strict=True)]
    return layers, mounts.overlay(list(reversed(layers)))


def test_python_runs_in_an_overlay_of_lazy_layers_and_is_profiled(
    mounts: Mounts, python_esgz: list[Path]
) -> None:
    _, merged = _mount_python(mounts, python_esgz)
    server = mounts.servers[0]
    assert server.no_open

    result = subprocess.run(
        ["chroot", str(merged), *PYTHON_CMD], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"

    python = [path for path, _ in server.profile("python")]
    assert JSON_PYC in python
    assert ENCODINGS_PYC in python
    assert python.index(ENCODINGS_PYC) < python.index(JSON_PYC)  # startup comes first
    assert len(python) == len(set(python))
    seconds = [s for _, s in server.profile("python")]
    assert seconds == sorted(seconds)
    base = [path for path, _ in server.profile("base")]
    assert any(path.endswith("/libc.so.6") for path in base), base
    assert not any(path.startswith("usr/share/doc/") for path in base)
    # Python read a small part of the image.
    assert len(python) < 200
    assert server.profile("top") == []


def test_merged_tree_equals_a_plain_unpack(
    mounts: Mounts, python_image: TestImage, python_esgz: list[Path], tmp_path: Path
) -> None:
    layers, merged = _mount_python(mounts, python_esgz)
    expected = tree_manifest(unpack_layers(python_image.layer_paths, tmp_path / "unpacked"))
    actual = tree_manifest(merged)
    assert diff_trees(expected, actual, names=("unpack", "overlay")) == []

    # The top layer's OCI semantics went through overlayfs, not through a copy.
    top = layers[2]
    whiteout = top / PYTHON_TOP.whiteout_file
    st = os.lstat(whiteout)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not (merged / PYTHON_TOP.whiteout_file).exists()
    assert stat.S_ISCHR(os.lstat(top / PYTHON_TOP.whiteout_dir).st_mode)
    assert not (merged / PYTHON_TOP.whiteout_dir).exists()
    assert os.getxattr(top / PYTHON_TOP.opaque_dir, "trusted.overlay.opaque") == b"y"
    assert ".wh..wh..opq" not in os.listdir(top / PYTHON_TOP.opaque_dir)
    assert sorted(os.listdir(merged / PYTHON_TOP.opaque_dir)) == sorted(
        name for name, _ in PYTHON_TOP.opaque_files
    )
    assert len(os.listdir(layers[0] / PYTHON_TOP.opaque_dir)) > len(PYTHON_TOP.opaque_files)
    a, b = (os.lstat(merged / name) for name in PYTHON_TOP.hardlinks)
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    for layer in layers:
        assert not {".prefetch.landmark", ".no.prefetch.landmark", "stargz.index.json"} & set(
            os.listdir(layer)
        )
