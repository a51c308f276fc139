"""The built test images: OCI structure, and that they unpack to a system that runs (chroot)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from lazyimage.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256_digest

from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.unpack import diff_trees, tree_manifest
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT, PYTHON_TOP, PYTHON_V2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(IMAGE_TEST_TIMEOUT),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and device nodes need root"),
]

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",  # leave the unpacked trees as the images made them
}


def chroot(root: Path, *argv: str) -> str:
    run = subprocess.run(
        ["chroot", str(root), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=CHROOT_ENV,
        check=False,
    )
    assert run.returncode == 0, f"{argv} exited {run.returncode}: {run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def python_root(python_image: TestImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return python_image.unpack(tmp_path_factory.mktemp("python") / "root")


def check_structure(image: TestImage, min_layers: int) -> None:
    layout = image.oci()
    assert (image.layout / "oci-layout").is_file()
    assert image.manifest.media_type == OCI_MANIFEST
    assert image.manifest.config.media_type == OCI_CONFIG
    assert layout.resolve(image.tag).digest == image.manifest_digest
    assert len(image.manifest.layers) >= min_layers
    assert image.config.platform.os == "linux"
    assert image.config.platform.architecture == "amd64"
    history = image.config.raw["history"]
    assert len(history) == len(image.manifest.layers)
    assert all(not h.get("empty_layer") for h in history)
    assert len(image.diff_ids) == len(image.manifest.layers)
    for layer, path, diff_id in zip(
        image.manifest.layers, image.layer_paths, image.diff_ids, strict=True
    ):
        assert layer.media_type == OCI_LAYER_GZIP
        data = path.read_bytes()
        assert len(data) == layer.size
        assert sha256_digest(data) == layer.digest
        assert data[:2] == b"\x1f\x8b"
        assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0: the blob does not depend on the clock
        assert sha256_digest(gzip.decompress(data)) == diff_id


def test_python_image_is_a_multi_layer_oci_image(python_image: TestImage) -> None:
    check_structure(python_image, min_layers=3)
    config = python_image.config.raw["config"]
    assert config["Cmd"] == ["python3"]
    assert any(e.startswith("PATH=") and "/usr/bin" in e for e in config["Env"])
    assert python_image.info["packages"]["python3-minimal"]
    assert python_image.info["packages"]["libpython3.11-stdlib"]
    assert python_image.uncompressed_size > python_image.compressed_size > 20 * 1024 * 1024


def test_python_image_runs_python_in_a_chroot(python_root: Path) -> None:
    out = chroot(
        python_root,
        "/usr/bin/python3",
        "-c",
        "import json, asyncio, email; print(json.dumps([asyncio.__name__, email.__name__]))",
    )
    assert json.loads(out) == ["asyncio", "email"]
    assert chroot(python_root, "/usr/bin/python3", "-c", PYTHON_PROBE_CODE).strip() == (
        PYTHON_PROBE_OUTPUT
    )
    # The script in the top layer, through its shebang; and python through /usr/local/bin.
    assert chroot(python_root, "/" + PYTHON_TOP.app_file).strip() == PYTHON_PROBE_OUTPUT
    assert chroot(python_root, "python", "-c", "print(6 * 7)").strip() == "42"


def test_python_layers_split_by_path(python_image: TestImage, tmp_path: Path) -> None:
    base = tree_manifest(python_image.unpack(tmp_path / "base", layers=1))
    assert "usr/bin/python3.11" not in base
    assert not any(p.startswith("usr/lib/python3.11/") for p in base)
    assert "usr/bin/bash" in base
    assert base["dev/null"].type == "char"
    assert not [p for p in base if p.endswith((".deb", "_Packages", ".bin", ".log"))]
    assert "var/cache/ldconfig/aux-cache" not in base
    assert not any(p.startswith("usr/share/locale/") and base[p].type == "dir" for p in base)
    assert "etc/hostname" not in base and "etc/resolv.conf" not in base
    two = tree_manifest(python_image.unpack(tmp_path / "two", layers=2))
    assert two["usr/bin/python3.11"].type == "file"
    assert two["usr/lib/python3.11/json/__init__.py"].type == "file"
    # The whole standard library is byte-compiled, not only libpython3.11-minimal's part.
    for module in ("json/__init__", "asyncio/events", "email/message"):
        package, _, name = module.rpartition("/")
        pyc = f"usr/lib/python3.11/{package}/__pycache__/{name}.cpython-311.pyc"
        assert two[pyc].type == "file", pyc
    # Every path of the base layer is still there, unchanged, after the python layer.
    assert diff_trees(base, {p: two[p] for p in base if p in two}) == []


def test_python_top_layer_applies_oci_semantics(
    python_image: TestImage, python_root: Path, tmp_path: Path
) -> None:
    top = PYTHON_TOP
    lower = python_image.unpack(tmp_path / "lower", layers=2)
    for path in (top.whiteout_file, top.whiteout_dir, top.opaque_dir, top.replaced_file):
        assert os.path.lexists(lower / path), path

    tree = tree_manifest(python_root)
    assert top.whiteout_file not in tree
    assert top.whiteout_dir not in tree
    assert not any(p.startswith(top.whiteout_dir + "/") for p in tree)
    assert not any(".wh." in p for p in tree)
    assert sorted(p for p in tree if p.startswith(top.opaque_dir + "/")) == sorted(
        f"{top.opaque_dir}/{name}" for name, _ in top.opaque_files
    )
    assert (python_root / top.replaced_file).read_text() == top.replaced_text
    assert tree[top.xattr_file].xattrs == {top.xattr_name: top.xattr_value.encode()}
    a, b = top.hardlinks
    assert tree[a].hardlink_group == tree[b].hardlink_group == a
    assert os.lstat(python_root / a).st_ino == os.lstat(python_root / b).st_ino
    assert tree[top.symlink].link_target == top.symlink_target
    assert tree[top.abs_symlink].link_target == top.abs_symlink_target
    owned = tree[top.owned_file]
    assert (owned.uid, owned.gid, owned.mode) == (top.owned_uid, top.owned_gid, top.owned_mode)
    big = tree[top.big_file]
    assert big.size == top.big_size > 4 * 1024 * 1024
    assert big.sha256 == hashlib.sha256(top.big_file_bytes()).hexdigest()
    # Random bytes: gzip cannot shrink the top layer much below the file.
    assert python_image.manifest.layers[-1].size > top.big_size * 0.95


def test_python_v2_changes_one_file_in_one_layer(
    python_image: TestImage, python_v2_image: TestImage, tmp_path: Path
) -> None:
    check_structure(python_v2_image, min_layers=3)
    old, new = python_image.manifest.layers, python_v2_image.manifest.layers
    changed = [i for i, (x, y) in enumerate(zip(old, new, strict=True)) if x.digest != y.digest]
    assert changed == [python_v2_image.info["changed_layer"]]
    assert len(changed) == 1
    for i in set(range(len(old))) - set(changed):
        same = python_image.layer_paths[i].read_bytes()
        assert python_v2_image.layer_paths[i].read_bytes() == same

    v1_root = python_image.unpack(tmp_path / "v1")
    v2_root = python_v2_image.unpack(tmp_path / "v2")
    differences = diff_trees(tree_manifest(v1_root), tree_manifest(v2_root))
    assert len(differences) == 1
    assert differences[0].startswith(f"differs: {PYTHON_V2.path}: size ")
    assert "sha256" in differences[0]
    code = "import colorsys; print(colorsys.LAZYIMAGE_VARIANT)"
    out = chroot(v2_root, "/usr/bin/python3", "-c", code)
    assert out.strip() == "v2"


def test_busybox_image_runs_applets(busybox_image: TestImage, tmp_path: Path) -> None:
    check_structure(busybox_image, min_layers=1)
    assert busybox_image.config.raw["config"]["Cmd"] == ["sh"]
    root = busybox_image.unpack(tmp_path / "root")
    assert chroot(root, "/bin/busybox", "echo", "hi") == "hi\n"
    tree = tree_manifest(root)
    for applet in ("sh", "echo", "cat", "ls", "sleep"):
        assert tree[f"bin/{applet}"].link_target == "busybox"
    assert chroot(root, "/bin/sh", "-c", "echo $((6 * 7)); cat /etc/passwd | head -n 1") == (
        "42\nroot:x:0:0:root:/root:/bin/sh\n"
    )
    assert chroot(root, "ls", "/bin/busybox").strip() == "/bin/busybox"
    assert tree["tmp"].mode == 0o1777
