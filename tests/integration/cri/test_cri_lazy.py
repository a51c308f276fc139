"""eStargz images pulled through containerd's CRI run lazily: the agent mounts each layer
(remote snapshots), containerd downloads none of them, and the registry serves little more
than what the container reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from lazyimage import names
from lazyimage.oci import Descriptor, sha256_digest

from tests.fixtures.agent import AgentProcess
from tests.fixtures.cri import ContainerRun, CRIError, CRINode, CRINodeFactory
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT, PYTHON_TOP
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.cri.helpers import (
    RegistryImage,
    convert_with_reference,
    layer_bytes,
    push_gzip,
    read_image,
    snapshot_results,
    write_image,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]

PROBE = ["python3", "-c", PYTHON_PROBE_CODE]
# The probe, then a file of the python image's top layer (tests.images.PYTHON_TOP).
PROBE_AND_TOP = ["sh", "-c", 'python3 -c "$1" && cat /etc/motd', "sh", PYTHON_PROBE_CODE]
PROBE_AND_TOP_OUTPUT = [PYTHON_PROBE_OUTPUT, PYTHON_TOP.replaced_text.strip()]


def _lazy_node(
    registry: RegistryServer, agent_factory: Any, cri_node_factory: CRINodeFactory
) -> tuple[AgentProcess, CRINode]:
    agent = agent_factory([registry.host], extra=["--no-background-fill"])
    return agent, cri_node_factory(agent, [registry])


def _assert_ran(run: ContainerRun, node: CRINode, expected: list[str] | None = None) -> None:
    assert run.exit_code == 0, (run.stderr, node.log())
    assert run.output == (expected or [PYTHON_PROBE_OUTPUT])


def _read_from(agent: AgentProcess, layer: Descriptor) -> list[str]:
    return [entry["path"] for entry in agent.profile(layer.digest.split(":", 1)[1])]


def _assert_lazy(
    agent: AgentProcess, node: CRINode, image: RegistryImage, lazy: list[bool]
) -> None:
    """Layer i was mounted remotely iff lazy[i], and containerd downloaded no layer below the
    first one that fell back.

    Above it, containerd 1.6 downloads every layer, remote or not: its unpacker starts one
    fetch of ``layers[i:]`` at the first layer whose Prepare it must fill (containerd's
    unpacker.go), and only skips the unpacking of the remote ones."""
    results = snapshot_results(agent, image)
    held = node.content_digests()
    mounted = {layer["digest"] for layer in agent.request("GET", "/v1/layers")}
    first_fallback = lazy.index(False) if False in lazy else len(lazy)
    for index, (layer, result) in enumerate(zip(image.layers, results, strict=True)):
        assert result is not None, f"no Prepare with a target for {layer.digest}"
        assert result["remote_snapshot_prepared"] is lazy[index], result
        assert (layer.digest in mounted) is lazy[index], (layer.digest, mounted)
        downloaded = index >= first_fallback
        assert (layer.digest in held) is downloaded, (index, layer.digest, downloaded)


def _check_bytes(
    registry: RegistryServer, agent: AgentProcess, image: RegistryImage, record_property: Any
) -> None:
    """Per eStargz layer, the bound the design sets: the bytes the registry served (with
    background fill off, all of them before the container's exit) are at most the priority
    zone, plus the TOC and footer, plus 1.2 x what the container read. "Read" takes each file
    in the agent's access profile of the layer whole, as the compressed extents of its chunks:
    the bytes the registry must serve to give it."""
    over = []
    for index, layer in enumerate(image.layers):
        if not image.is_estargz(layer):
            continue
        counted = layer_bytes(registry, agent, layer)
        print(f"layer {index} {counted.describe()}")
        record_property(f"layer{index}_served", counted.served)
        record_property(f"layer{index}_budget", counted.budget)
        record_property(f"layer{index}_read_compressed", counted.read_compressed)
        if counted.served > counted.budget:
            over.append(counted.describe())
    assert not over, over


def test_estargz_image_runs_lazily(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
    record_property: Any,
) -> None:
    converted = push_estargz(python_image, registry, "cri/python")
    image = read_image(registry, converted.ref)
    agent, node = _lazy_node(registry, agent_factory, cri_node_factory)
    registry.clear_access_log()

    run = node.run(image.ref, PROBE)
    _assert_ran(run, node)
    record_property("pull_to_first_output_s", run.first_output_seconds)
    print(f"\nlazy: {run.timings}, first output after {run.first_output_seconds:.2f} s")

    _assert_lazy(agent, node, image, [True] * len(image.layers))
    # The manifest and config are containerd's to keep; the layers never reached it.
    assert image.manifest.config.digest in node.content_digests()
    # The container's reads went through the agent's layers.
    read = _read_from(agent, image.layers[1])
    assert any(p.startswith("usr/lib/python3.11/json/") for p in read), read
    _check_bytes(registry, agent, image, record_property)


def test_reference_converted_image_runs_lazily(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
    ctr_remote: Path,
    tmp_path: Path,
    record_property: Any,
) -> None:
    source = push_gzip(python_image, registry, "cri/reference")
    target = f"{registry.host}/cri/reference:estargz"
    convert_with_reference(ctr_remote, tmp_path / "convert", source, target)
    image = read_image(registry, target)
    assert all(image.is_estargz(layer) for layer in image.layers)
    agent, node = _lazy_node(registry, agent_factory, cri_node_factory)
    registry.clear_access_log()

    run = node.run(image.ref, PROBE)
    _assert_ran(run, node)
    print(f"\nreference-converted: first output after {run.first_output_seconds:.2f} s")
    _assert_lazy(agent, node, image, [True] * len(image.layers))
    _check_bytes(registry, agent, image, record_property)


def test_wrong_toc_digest_is_refused_lazily(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
) -> None:
    converted = read_image(registry, push_estargz(python_image, registry, "cri/python").ref)
    bad = 1
    layers = list(converted.layers)
    wrong = sha256_digest(b"not the TOC of this layer")
    layers[bad] = _annotated(layers[bad], {names.TOC_DIGEST_ANNOTATION: wrong})
    image = write_image(
        registry,
        f"{registry.host}/cri/python:wrong-toc",
        dataclasses.replace(converted.manifest, layers=layers),
        converted.config,
    )
    agent, node = _lazy_node(registry, agent_factory, cri_node_factory)

    try:
        run = node.run(image.ref, PROBE_AND_TOP)
    except CRIError as exc:
        # Failing is allowed, if it says why; serving the layer unverified is not.
        assert "digest" in str(exc).lower(), exc
        run = None
    results = snapshot_results(agent, image)
    refused = results[bad]
    assert refused is not None and refused["remote_snapshot_prepared"] is False
    assert "VerificationError" in refused["reason"] and "TOC" in refused["reason"], refused
    mounted = {layer["digest"] for layer in agent.request("GET", "/v1/layers")}
    assert image.layers[bad].digest not in mounted
    if run is not None:
        # It fell back: containerd downloaded that layer and verified it by its digest.
        _assert_ran(run, node, PROBE_AND_TOP_OUTPUT)
        _assert_lazy(agent, node, image, [i != bad for i in range(len(image.layers))])
        assert "etc/motd" in _read_from(agent, image.layers[-1])


def test_mixed_image_runs_with_remote_and_fallback_layers(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
) -> None:
    converted = read_image(registry, push_estargz(python_image, registry, "cri/python").ref)
    original = read_image(registry, f"{registry.host}/cri/python:gzip")
    gzip_layer = 1  # the python layer, between two eStargz ones
    layers = list(converted.layers)
    layers[gzip_layer] = original.layers[gzip_layer]
    diff_ids = list(converted.config.diff_ids)
    diff_ids[gzip_layer] = original.config.diff_ids[gzip_layer]
    image = write_image(
        registry,
        f"{registry.host}/cri/python:mixed",
        dataclasses.replace(converted.manifest, layers=layers),
        converted.config.with_diff_ids(diff_ids),
    )
    agent, node = _lazy_node(registry, agent_factory, cri_node_factory)

    run = node.run(image.ref, PROBE_AND_TOP)
    _assert_ran(run, node, PROBE_AND_TOP_OUTPUT)
    _assert_lazy(agent, node, image, [i != gzip_layer for i in range(len(image.layers))])
    # Reads went to the remote layers on both sides of the normal one.
    assert any(p.startswith("usr/lib/x86_64-linux-gnu/") for p in _read_from(agent, layers[0]))
    assert "etc/motd" in _read_from(agent, layers[2])
    reason = snapshot_results(agent, image)[gzip_layer]
    assert reason is not None and "not-estargz" in reason["reason"]


def _annotated(layer: Descriptor, changes: dict[str, str]) -> Descriptor:
    return dataclasses.replace(layer, annotations={**layer.annotations, **changes})
