"""Which pods ask for a prewarm, and what they ask for."""

from __future__ import annotations

from typing import Any

from lazyimage.api import SecretRef
from lazyimage_operator.pods import prewarm_request


def _pod(**overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "annotations": {"lazyimage.io/prewarm": "true"},
        },
        "spec": {
            "nodeName": "node-a",
            "initContainers": [{"name": "init", "image": "reg.local:5000/tools:1"}],
            "containers": [
                {"name": "app", "image": "reg.local:5000/app:2"},
                {"name": "side", "image": "reg.local:5000/tools:1"},
            ],
            "imagePullSecrets": [{"name": "pull"}],
        },
        "status": {"phase": "Pending"},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        if value is None:
            pod[section].pop(key, None)
        else:
            pod[section][key] = value
    return pod


def test_bound_annotated_pod_asks_for_its_images_once_each_in_order() -> None:
    request = prewarm_request(_pod())
    assert request is not None
    assert request.node == "node-a"
    assert request.pod == "shop/web-1"
    assert request.images == ("reg.local:5000/tools:1", "reg.local:5000/app:2")
    assert request.pull_secrets == (SecretRef("shop", "pull"),)


def test_short_names_are_normalised_so_spellings_share_an_order() -> None:
    pod = _pod(spec__containers=[{"image": "nginx"}, {"image": "docker.io/library/nginx:latest"}])
    pod["spec"].pop("initContainers")
    request = prewarm_request(pod)
    assert request is not None
    assert request.images == ("docker.io/library/nginx:latest",)


def test_pods_that_ask_for_nothing() -> None:
    assert prewarm_request(_pod(metadata__annotations={})) is None
    assert prewarm_request(_pod(metadata__annotations={"lazyimage.io/prewarm": "false"})) is None
    assert prewarm_request(_pod(spec__nodeName=None)) is None
    assert prewarm_request(_pod(status__phase="Running")) is None
    assert prewarm_request(_pod(metadata__deletionTimestamp="2026-11-28T10:00:00Z")) is None
    empty = _pod(spec__containers=[])
    empty["spec"].pop("initContainers")
    assert prewarm_request(empty) is None


def test_a_pod_without_a_phase_yet_counts_as_pending() -> None:
    pod = _pod()
    pod.pop("status")
    assert prewarm_request(pod) is not None


def test_the_pods_runtime_class_travels_with_its_request() -> None:
    pod = _pod()
    pod["spec"]["runtimeClassName"] = "lazyimage"
    request = prewarm_request(pod)
    assert request is not None and request.runtime_class == "lazyimage"
    plain = prewarm_request(_pod())
    assert plain is not None and plain.runtime_class is None
