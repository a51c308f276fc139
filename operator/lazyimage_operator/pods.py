"""What a pod asks to have prewarmed: read from the pod alone, no API calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lazyimage import names
from lazyimage.api import SecretRef

from lazyimage_operator.naming import canonical_image

__all__ = ["PrewarmRequest", "prewarm_request"]


@dataclass(frozen=True)
class PrewarmRequest:
    """A bound pod's images, to be prefetched on its node."""

    pod: str  # namespace/name, for the order's reason
    node: str
    images: tuple[str, ...]
    pull_secrets: tuple[SecretRef, ...]
    runtime_class: str | None = None  # spec.runtimeClassName: lazy only in lazyimage's class


def prewarm_request(pod: Mapping[str, Any]) -> PrewarmRequest | None:
    """The request of a pod annotated for prewarm that is bound to a node and not yet running.

    A pod that is not annotated, not yet scheduled, being deleted, or already past Pending asks
    for nothing: prewarming only helps before kubelet pulls.
    """
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = metadata.get("annotations") or {}
    if annotations.get(names.POD_PREWARM_ANNOTATION) != "true":
        return None
    node = spec.get("nodeName")
    if not node or metadata.get("deletionTimestamp"):
        return None
    if status.get("phase") not in (None, "Pending"):
        return None
    images: list[str] = []
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            image = container.get("image")
            if image and canonical_image(image) not in images:
                images.append(canonical_image(image))
    if not images:
        return None
    namespace = str(metadata.get("namespace") or "default")
    secrets = tuple(
        SecretRef(namespace, str(ref["name"]))
        for ref in spec.get("imagePullSecrets") or []
        if ref.get("name")
    )
    return PrewarmRequest(
        pod=f"{namespace}/{metadata.get('name', '')}",
        node=str(node),
        images=tuple(images),
        pull_secrets=secrets,
        runtime_class=spec.get("runtimeClassName") or None,
    )
