"""The lazyimage image, built from the Dockerfile for real.

``scripts/build-image`` builds it with buildah on ``python-base`` (made here from Debian
packages) and pushes it to a real registry; the test pulls it back with lazyimage's own
registry client (``lazyimage copy``), unpacks its layers as containerd would, and runs its
console scripts inside that rootfs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lazyimage.oci import ImageConfig, Manifest, OCILayout

from tests.fixtures.project_image import IMAGE_BUILD_TIMEOUT, project_version
from tests.fixtures.unpack import unpack_layers
from tests.images import _proc

REPO = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(IMAGE_BUILD_TIMEOUT + 600),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah --isolation chroot and chroot need root"),
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
]

NOBODY = "65534:65534"


@dataclass(frozen=True)
class PulledImage:
    ref: str
    manifest: Manifest
    config: ImageConfig
    root: Path
    layer_sizes: list[tuple[int, int]]  # (compressed, uncompressed) bytes, lowest first

    @property
    def compressed_size(self) -> int:
        return sum(compressed for compressed, _ in self.layer_sizes)

    @property
    def uncompressed_size(self) -> int:
        return sum(uncompressed for _, uncompressed in self.layer_sizes)

    @property
    def env(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.config.raw["config"].get("Env") or [])
        return {name: value for name, _, value in pairs}

    def run(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the image's rootfs with the image's environment."""
        userspec = [f"--userspec={user}"] if user else []
        return subprocess.run(
            ["chroot", *userspec, str(self.root), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            # Leave the unpacked tree as the image made it.
            env={**self.env, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
            check=False,
        )


def _run_logged(argv: list[str], timeout: float) -> None:
    print("$ " + " ".join(argv), flush=True)
    _proc.run_streaming(
        argv, timeout=timeout, on_line=lambda line: print(line, flush=True), cwd=REPO
    )


@pytest.fixture(scope="module")
def pushed(lazyimage_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulledImage]:
    """The image as the registry serves it: built (or reused), pushed, pulled back, unpacked."""
    ref = lazyimage_image
    host = ref.split("/", 1)[0]
    work = tmp_path_factory.mktemp("lazyimage-image")
    layout_dir = work / "oci"
    _run_logged(
        [
            str(REPO / ".venv/bin/lazyimage"),
            "copy",
            "--insecure-registry",
            host,
            ref,
            f"oci:{layout_dir}:pulled",
        ],
        300,
    )
    layout = OCILayout(layout_dir)
    manifest = Manifest.parse(layout.read_blob(layout.resolve("pulled").digest))
    config = ImageConfig.parse(layout.read_blob(manifest.config.digest))
    blobs = [layout.blob_path(layer.digest) for layer in manifest.layers]
    layer_sizes = []
    for layer, blob in zip(manifest.layers, blobs, strict=True):
        uncompressed = 0
        with gzip.open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(chunk)
        layer_sizes.append((layer.size, uncompressed))
    root = unpack_layers(blobs, work / "root")
    image = PulledImage(
        ref=ref,
        manifest=manifest,
        config=config,
        root=root,
        layer_sizes=layer_sizes,
    )
    print(
        f"image {ref}: {len(blobs)} layers, {image.compressed_size / 2**20:.1f} MiB compressed,"
        f" {image.uncompressed_size / 2**20:.1f} MiB uncompressed",
        flush=True,
    )
    yield image
    _proc.remove_tree(work)


def test_the_pushed_image_is_the_one_the_chart_installs(pushed: PulledImage) -> None:
    values = (REPO / "charts/lazyimage/values.yaml").read_text()
    chart = (REPO / "charts/lazyimage/Chart.yaml").read_text()
    # The chart's default image is `lazyimage:<appVersion>`; the build tags the same name.
    assert "  repository: lazyimage\n" in values
    assert f'appVersion: "{project_version()}"' in chart
    assert pushed.ref.endswith(f"/lazyimage:{project_version()}")
    assert pushed.config.platform.os == "linux"
    assert pushed.config.platform.architecture == "amd64"
    assert all(layer.media_type.endswith("tar+gzip") for layer in pushed.manifest.layers)


@pytest.mark.parametrize("script", ["lazyimage", "lazyimage-agent", "lazyimage-operator"])
def test_console_scripts_run_in_the_image(pushed: PulledImage, script: str) -> None:
    as_root = pushed.run(script, "--help")
    assert as_root.returncode == 0, as_root.stderr
    assert "usage:" in as_root.stdout
    # The image's own user, which the operator runs as.
    as_user = pushed.run(script, "--help", user=NOBODY)
    assert as_user.returncode == 0, as_user.stderr
    assert as_user.stdout == as_root.stdout


def test_the_image_runs_as_non_root(pushed: PulledImage) -> None:
    raw: dict[str, Any] = pushed.config.raw["config"]
    assert raw.get("User") == NOBODY
    assert raw.get("Entrypoint") == ["lazyimage"]
    passwd = (pushed.root / "etc/passwd").read_text().splitlines()
    assert any(line.startswith("nobody:x:65534:65534:") for line in passwd)
    whoami = pushed.run("python3", "-c", "import os; print(os.getuid())", user=NOBODY)
    assert whoami.stdout.strip() == "65534", whoami.stderr


def test_the_fuse3_runtime_is_there_and_the_build_tools_are_not(pushed: PulledImage) -> None:
    root = pushed.root
    assert list(root.glob("usr/lib/*/libfuse3.so.3")), "libfuse3 is missing"
    assert (root / "usr/bin/fusermount3").is_file()
    loaded = pushed.run("python3", "-c", "import pyfuse3; print(pyfuse3.__file__)", user=NOBODY)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("/opt/lazyimage/")
    # lazyimage's patched pyfuse3 (scripts/build-pyfuse3), which the agent refuses to run without.
    check = "from lazyimage.fusefs._pyfuse3_build import require_patched_pyfuse3 as r; r()"
    patched = pushed.run("python3", "-c", check, user=NOBODY)
    assert patched.returncode == 0, patched.stderr
    for tool in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/x86_64-linux-gnu-gcc-12", "usr/bin/ld"):
        assert not (root / tool).exists(), f"{tool} is in the final image"
    assert not (root / "usr/include/fuse3").exists(), "libfuse3-dev is in the final image"
    for leftover in ("wheels", "src", "opt/build"):
        assert not (root / leftover).exists(), f"/{leftover} of the build stage is in the image"
    assert not list((root / "opt/lazyimage/bin").glob("pip*")), "pip is in the final image"
    assert not list(root.glob("var/lib/apt/lists/*_Packages")), "apt lists are in the image"
    assert not list(root.glob("var/cache/apt/*.bin")), "apt's package caches are in the image"
    assert not list(root.glob("var/cache/apt/archives/*.deb")), ".debs are in the image"


def test_sizes_are_reported(pushed: PulledImage) -> None:
    record = {
        "layers": len(pushed.manifest.layers),
        "compressed_bytes": pushed.compressed_size,
        "uncompressed_bytes": pushed.uncompressed_size,
        "layer_bytes": pushed.layer_sizes,
    }
    print("image sizes: " + json.dumps(record), flush=True)
    assert 0 < pushed.compressed_size < pushed.uncompressed_size
