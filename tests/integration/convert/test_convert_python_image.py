"""End to end: the Debian python image converted through a real registry and checked.

1. push the gzip image; 2. convert it; 3. pull every layer back; 4. verify each in the
reference Go estargz package; 5. unpack and compare with the source tree; 6. run python3 in a
chroot of the result.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import anyio
import pytest
from lazyimage import names
from lazyimage.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, ImageConfig, Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.gotools import EstargzRef
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.fixtures.unpack import diff_trees, tree_manifest, unpack_layers
from tests.integration.convert.cli import lazyimage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _push(image: TestImage, registry: RegistryServer, name: str) -> str:
    ref = f"{registry.host}/{name}"
    result = lazyimage(
        "copy", f"oci:{image.layout}:{image.tag}", ref, "--insecure-registry", registry.host
    )
    assert result.code == 0, result.err
    return ref


async def _pull(
    registry: RegistryServer, ref_text: str, dest: Path
) -> tuple[Manifest, bytes, list[Path]]:
    ref = Reference.parse(ref_text)
    async with RegistryClient(insecure_registries=(registry.host,)) as client:
        fetched = await client.get_manifest(ref)
        manifest = Manifest.parse(fetched.data, fetched.media_type)
        config = await client.get_blob(ref, manifest.config.digest)
        paths = []
        for index, layer in enumerate(manifest.layers):
            path = dest / f"layer{index}"
            await client.download_blob(ref, layer.digest, path)
            paths.append(path)
    return manifest, config, paths


def test_python_image_converts_verifies_unpacks_and_runs(
    registry: RegistryServer,
    python_image: TestImage,
    estargz_ref: EstargzRef,
    tmp_path: Path,
) -> None:
    source = _push(python_image, registry, "demo/python:gzip")
    target = f"{registry.host}/demo/python:esgz"
    result = lazyimage("convert", source, target, "--insecure-registry", registry.host)
    assert result.code == 0, result.err
    digest = result.out.strip()
    assert digest.startswith("sha256:") and len(digest) == 71
    assert "\r" not in result.err  # no progress bar off a terminal
    assert "size" in result.err and "%" in result.err  # the size report

    (tmp_path / "esgz").mkdir()
    manifest, config_data, blobs = anyio.run(_pull, registry, target, tmp_path / "esgz")
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config.media_type == OCI_CONFIG
    assert len(manifest.layers) == len(python_image.manifest.layers)
    config = ImageConfig.parse(config_data)
    source_config = python_image.config.raw
    assert config.raw["config"] == source_config["config"]  # the runtime config is kept
    for layer, blob, diff_id in zip(manifest.layers, blobs, config.diff_ids, strict=True):
        assert layer.media_type == OCI_LAYER_GZIP
        toc_digest = layer.annotations[names.TOC_DIGEST_ANNOTATION]
        raw = gzip.decompress(blob.read_bytes())
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        assert int(layer.annotations[names.UNCOMPRESSED_SIZE_ANNOTATION]) == len(raw)
        report = estargz_ref.verify(blob, toc_digest)
        assert report["tocDigest"] == toc_digest

    converted_root = tmp_path / "converted-root"
    source_root = tmp_path / "source-root"
    unpack_layers(blobs, converted_root)
    unpack_layers(python_image.layer_paths, source_root)
    differences = diff_trees(tree_manifest(source_root), tree_manifest(converted_root))
    assert differences == []

    run = subprocess.run(
        [
            "chroot",
            str(converted_root),
            "/usr/bin/python3",
            "-c",
            "import json, asyncio, email; print(json.dumps({'ok': True}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"ok": True}


def test_inspect_reads_each_layer_with_at_most_two_range_requests(
    registry: RegistryServer, python_image: TestImage
) -> None:
    source = _push(python_image, registry, "demo/python:gzip")
    target = f"{registry.host}/demo/python:esgz"
    assert lazyimage("convert", source, target, "--insecure-registry", registry.host).code == 0
    registry.clear_access_log()

    result = lazyimage("inspect", target, "--json", "--insecure-registry", registry.host)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert len(report["layers"]) == len(python_image.manifest.layers)
    for layer in report["layers"]:
        assert layer["is_estargz"] and layer["toc_verified"]
        assert layer["file_count"] > 0
        gets = registry.blob_gets(layer["digest"])
        assert 1 <= len(gets) <= 2, gets
        assert all(g.status == 206 for g in gets)
        assert sum(g.size for g in gets) < layer["size"]  # never the whole blob


def test_converting_again_keeps_estargz_layers(
    registry: RegistryServer, python_image: TestImage
) -> None:
    source = _push(python_image, registry, "demo/python:gzip")
    once = f"{registry.host}/demo/python:esgz"
    twice = f"{registry.host}/demo/python:esgz2"
    first = lazyimage("convert", source, once, "--insecure-registry", registry.host)
    second = lazyimage("convert", once, twice, "--insecure-registry", registry.host)
    assert first.code == 0 and second.code == 0, second.err
    assert "0 layers converted" in second.err
    assert second.out == first.out  # nothing changed, so the same manifest


def test_prioritized_files_form_a_prefetch_zone(
    registry: RegistryServer, python_image: TestImage, tmp_path: Path
) -> None:
    source = _push(python_image, registry, "demo/python:gzip")
    target = f"{registry.host}/demo/python:prio"
    listing = tmp_path / "startup.txt"
    listing.write_text("# what python3 reads first\nusr/bin/python3*\nusr/lib/python3.11/json/**\n")
    result = lazyimage(
        "convert",
        source,
        target,
        "--prioritize-from",
        str(listing),
        "--insecure-registry",
        registry.host,
    )
    assert result.code == 0, result.err
    inspected = json.loads(
        lazyimage("inspect", target, "--json", "--files", "--insecure-registry", registry.host).out
    )
    zones = [layer["prefetch_zone"] for layer in inspected["layers"]]
    assert any(zone > 0 for zone in zones), zones
    prioritized = next(layer for layer in inspected["layers"] if layer["prefetch_zone"] > 0)
    files = prioritized["files"]
    landmark = [f["path"] for f in files].index(".prefetch.landmark")
    leading = [f for f in files[:landmark] if f["type"] != "dir"]
    assert leading, "no prioritized file before the landmark"
    for f in leading:  # everything ahead of the landmark is what was asked for
        assert f["path"].startswith(("usr/lib/python3.11/json/", "usr/bin/python3")), f


def test_layout_to_layout_and_back(python_image: TestImage, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    result = lazyimage("convert", f"oci:{python_image.layout}:{python_image.tag}", f"oci:{out}:v1")
    assert result.code == 0, result.err
    inspected = lazyimage("inspect", f"oci:{out}:v1")
    assert inspected.code == 0, inspected.err
    assert inspected.out.count(" yes ") == len(python_image.manifest.layers)
