"""Bad input through the real command: a specific message and exit code, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lazyimage.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    OCILayout,
    Platform,
)

from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import TestImage
from tests.fixtures.registry import RegistryServer
from tests.integration.convert.cli import lazyimage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _push(image: TestImage, registry: RegistryServer, name: str) -> str:
    ref = f"{registry.host}/{name}"
    pushed = lazyimage("copy", image.ref, ref, "--insecure-registry", registry.host)
    assert pushed.code == 0, pushed.err
    return ref


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def test_missing_tag(registry: RegistryServer, busybox_image: TestImage) -> None:
    _push(busybox_image, registry, "demo/busybox:1")
    result = lazyimage(
        "convert",
        f"{registry.host}/demo/busybox:nope",
        f"{registry.host}/demo/busybox:esgz",
        "--insecure-registry",
        registry.host,
    )
    assert result.code == 3
    assert "demo/busybox" in result.err and "nope" in result.err
    _no_traceback(result.err)


def test_missing_repository(registry: RegistryServer) -> None:
    result = lazyimage(
        "inspect", f"{registry.host}/no/such:1", "--insecure-registry", registry.host
    )
    assert result.code == 3
    assert "no/such" in result.err
    _no_traceback(result.err)


def test_unauthorized(auth_registry: RegistryServer, tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = lazyimage(
        "inspect",
        f"{auth_registry.host}/private/app:1",
        "--insecure-registry",
        auth_registry.host,
        env=env,
    )
    assert result.code == 4
    assert auth_registry.host in result.err
    _no_traceback(result.err)


def test_credentials_from_the_docker_config(
    auth_registry: RegistryServer, busybox_image: TestImage, tmp_path: Path
) -> None:
    import base64

    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token.decode()}}})
    )
    env = {"DOCKER_CONFIG": str(tmp_path), "PATH": "/usr/bin:/bin"}
    source = f"{auth_registry.host}/private/busybox:1"
    copied = lazyimage(
        "copy", busybox_image.ref, source, "--insecure-registry", auth_registry.host, env=env
    )
    assert copied.code == 0, copied.err
    converted = lazyimage(
        "convert",
        source,
        f"{auth_registry.host}/private/busybox:esgz",
        "--insecure-registry",
        auth_registry.host,
        env=env,
    )
    assert converted.code == 0, converted.err


def test_a_corrupt_layer_blob_names_the_layer(
    registry: RegistryServer, busybox_image: TestImage
) -> None:
    source = _push(busybox_image, registry, "demo/busybox:1")
    layer = busybox_image.manifest.layers[0].digest
    path = registry.blob_path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = lazyimage(
        "convert",
        source,
        f"{registry.host}/demo/busybox:esgz",
        "--insecure-registry",
        registry.host,
    )
    assert result.code == 6, result.err
    assert layer in result.err and "demo/busybox" in result.err
    _no_traceback(result.err)


def test_registry_errors_are_retried(registry: RegistryServer, busybox_image: TestImage) -> None:
    _push(busybox_image, registry, "demo/busybox:1")
    with FaultProxy(registry.host) as proxy:
        rule = proxy.add(Fault.status(500), method="GET", path=r"/blobs/", times=3)
        host = proxy.host
        result = lazyimage(
            "convert",
            f"{host}/demo/busybox:1",
            f"{host}/demo/busybox:esgz",
            "--insecure-registry",
            host,
        )
    assert result.code == 0, result.err
    assert rule.applied == 3


def test_an_unreachable_registry(tmp_path: Path) -> None:
    result = lazyimage("inspect", "127.0.0.1:9/x/y:1", "--insecure-registry", "127.0.0.1:9")
    assert result.code == 5
    assert "127.0.0.1:9" in result.err
    _no_traceback(result.err)


def test_a_plain_http_registry_without_insecure_registry(registry: RegistryServer) -> None:
    result = lazyimage("inspect", f"{registry.host}/demo/busybox:1")
    assert result.code == 2, result.err
    assert f"{registry.host} speaks plain http" in result.err
    assert f"pass --insecure-registry {registry.host}" in result.err
    assert "attempts" not in result.err  # named at once, not after the retries
    _no_traceback(result.err)


def test_a_bad_lazyimage_variable() -> None:
    env = {**os.environ, "LAZYIMAGE_DEBUG": "maybe"}
    result = lazyimage("inspect", "127.0.0.1:9/x/y:1", env=env)
    assert result.code == 2
    assert "LAZYIMAGE_DEBUG='maybe'" in result.err and "expected one of" in result.err
    _no_traceback(result.err)


def test_a_bad_reference_and_a_bad_flag() -> None:
    assert lazyimage("inspect", "UPPER/Case:tag").code == 2
    assert lazyimage("convert", "a", "b", "--level", "12").code == 2
    assert lazyimage("convert", "a", "b", "--chunk-size", "-3").code == 2


def _two_platform_layout(image: TestImage, root: Path) -> Path:
    """The busybox image listed twice in an index: as linux/amd64 and as linux/arm64/v8."""
    layout = OCILayout.create(root)
    for digest in [image.manifest.config.digest, *(x.digest for x in image.manifest.layers)]:
        layout.import_blob_file(image.layout / "blobs" / "sha256" / digest[7:], digest)
    entries = []
    for platform in (Platform("linux", "amd64"), Platform("linux", "arm64", "v8")):
        raw = dict(image.config.raw, architecture=platform.architecture)
        if platform.variant:
            raw["variant"] = platform.variant
        config = ImageConfig(raw).to_bytes()
        config_digest = layout.write_blob(config)
        manifest = Manifest(
            OCI_MANIFEST,
            Descriptor(OCI_CONFIG, config_digest, len(config)),
            list(image.manifest.layers),
        ).to_bytes()
        entries.append(
            Descriptor(OCI_MANIFEST, layout.write_blob(manifest), len(manifest), platform=platform)
        )
    index = Index(OCI_INDEX, entries).to_bytes()
    layout.set_tag(Descriptor(OCI_INDEX, layout.write_blob(index), len(index)), "multi")
    return root


def test_platforms_of_an_index(
    registry: RegistryServer, busybox_image: TestImage, tmp_path: Path
) -> None:
    layout = _two_platform_layout(busybox_image, tmp_path / "multi")
    source = f"{registry.host}/demo/multi:1"
    assert (
        lazyimage("copy", f"oci:{layout}:multi", source, "--insecure-registry", registry.host).code
        == 0
    )

    arm = lazyimage(
        "convert",
        source,
        f"{registry.host}/demo/multi:arm",
        "--platform",
        "linux/arm64",
        "--insecure-registry",
        registry.host,
    )
    assert arm.code == 0, arm.err
    assert "linux/arm64/v8" in arm.err
    inspected = json.loads(
        lazyimage(
            "inspect",
            f"{registry.host}/demo/multi:arm",
            "--json",
            "--insecure-registry",
            registry.host,
        ).out
    )
    assert inspected["platform"] == "linux/arm64/v8"

    missing = lazyimage(
        "convert",
        source,
        f"{registry.host}/demo/multi:s390x",
        "--platform",
        "linux/s390x",
        "--insecure-registry",
        registry.host,
    )
    assert missing.code == 3 and "linux/amd64" in missing.err

    both = lazyimage(
        "convert",
        source,
        f"{registry.host}/demo/multi:all",
        "--all-platforms",
        "--insecure-registry",
        registry.host,
    )
    assert both.code == 0, both.err
    for platform in ("linux/amd64", "linux/arm64/v8"):
        result = lazyimage(
            "inspect",
            f"{registry.host}/demo/multi:all",
            "--json",
            "--platform",
            platform,
            "--insecure-registry",
            registry.host,
        )
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["platform"] == platform
        assert all(layer["is_estargz"] for layer in report["layers"])
