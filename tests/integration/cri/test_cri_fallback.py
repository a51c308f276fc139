"""kubelet's sequence through containerd's CRI with the lazyimage snapshotter, on an image with
gzip layers: nothing is eligible for a lazy mount, so every layer falls back to a normal
snapshot that containerd downloads and unpacks, and the container runs from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cri import CRINodeFactory
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.cri.helpers import push_gzip, read_image, snapshot_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]


def test_gzip_image_runs_through_the_fallback(
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
    record_property: Any,
) -> None:
    ref = push_gzip(python_image, registry, "cri/python")
    image = read_image(registry, ref)
    agent = agent_factory([registry.host])
    node = cri_node_factory(agent, [registry])

    version = node.client.version()
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")

    run = node.run(ref, ["python3", "-c", PYTHON_PROBE_CODE])
    assert run.exit_code == 0, (run.stderr, node.log())
    assert run.output == [PYTHON_PROBE_OUTPUT]
    record_property("pull_to_first_output_s", run.first_output_seconds)
    print(f"\ngzip fallback: {run.timings}, first output after {run.first_output_seconds:.2f} s")

    # Each layer was offered to the agent, which declined it, saying why.
    results = snapshot_results(agent, image)
    for layer, result in zip(image.layers, results, strict=True):
        assert result is not None, f"no Prepare with a target for {layer.digest}"
        assert result["remote_snapshot_prepared"] is False
        assert "not-estargz" in result["reason"], result
    fallbacks = agent.metrics()[
        'lazyimage_snapshot_prepares_total{reason="not-estargz",result="fallback"}'
    ]
    assert fallbacks >= len(image.layers)

    # containerd downloaded every layer itself and the image is known to CRI.
    assert {layer.digest for layer in image.layers} <= node.content_digests()
    status = node.client.image_status(ref)
    assert status is not None and ref in status.repo_tags
    assert run.image_id == status.id
    assert any(ref in listed.repo_tags for listed in node.client.list_images())

    # Nothing was mounted lazily.
    assert agent.request("GET", "/v1/layers") == []

    # A second pod from the pulled image. Its line is longer than containerd's
    # max_container_log_line_size, so the log holds it as partial lines (tag P, then F).
    long_line = "x" * 40000
    second = node.run(ref, ["python3", "-c", f"print({long_line!r}); print('end')"], pull=False)
    assert second.exit_code == 0, second.stderr
    assert second.output == [long_line, "end"]
    log_file = next(Path(node.pods_dir).glob(f"{second.name}-*/{second.name}/0.log"))
    assert " stdout P " in log_file.read_text()

    # The image filesystem CRI reports for kubelet's image GC and eviction.
    assert node.client.image_fs_info().image_filesystems
