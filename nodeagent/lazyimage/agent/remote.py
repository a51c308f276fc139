"""The snapshotter's remote filesystem: containerd's layer labels in, lazy mounts out.

containerd's Prepare for a layer carries the layer descriptor's annotations and the CRI
labels; from them this picks the image, the layer and its TOC digest, and asks the
LayerManager (on the trio loop) to mount it. Called from gRPC worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import structlog
import trio

from lazyimage import errors, metrics, names
from lazyimage.agent.layers import LayerManager, LayerSpec
from lazyimage.oci import is_digest
from lazyimage.registry import Reference

__all__ = ["AgentRemoteFS", "NotEligibleError", "image_layers", "spec_from_labels"]

log = structlog.get_logger(__name__)


class NotEligibleError(errors.LazyImageError):
    """A layer that cannot be mounted lazily; ``reason`` is a short, bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def spec_from_labels(labels: Mapping[str, str]) -> LayerSpec:
    """The remote layer a Prepare's labels describe, or NotEligibleError saying why not."""
    toc_digest = labels.get(names.TOC_DIGEST_ANNOTATION, "")
    if not toc_digest:
        raise NotEligibleError("not-estargz", f"no {names.TOC_DIGEST_ANNOTATION} label")
    ref_text = labels.get(names.LABEL_CRI_IMAGE_REF) or labels.get(names.LABEL_STARGZ_REFERENCE)
    digest = labels.get(names.LABEL_CRI_LAYER_DIGEST) or labels.get(names.LABEL_STARGZ_DIGEST)
    if not ref_text or not digest:
        raise NotEligibleError(
            "no-image-labels",
            "the image reference and layer digest labels are missing "
            "(set disable_snapshot_annotations = false in containerd's CRI config)",
        )
    if not is_digest(digest) or not is_digest(toc_digest):
        raise NotEligibleError("bad-labels", f"layer {digest!r} or TOC {toc_digest!r}")
    try:
        ref = Reference.parse(ref_text)
    except errors.InvalidReferenceError as exc:
        raise NotEligibleError("bad-labels", str(exc)) from exc
    return LayerSpec(ref, digest, toc_digest)


def image_layers(labels: Mapping[str, str]) -> list[str]:
    """The image's layer digests that CRI lists on each layer's Prepare (containerd leaves
    out those that would not fit the label's size limit)."""
    listed = labels.get(names.LABEL_CRI_IMAGE_LAYERS, "")
    return [d for d in (part.strip() for part in listed.split(",")) if is_digest(d)]


class AgentRemoteFS:
    """Implements snapshotter.RemoteFS over the agent's LayerManager."""

    def __init__(self, manager: LayerManager, token: trio.lowlevel.TrioToken) -> None:
        self._manager = manager
        self._token = token
        self._lock = threading.Lock()
        self._layers: dict[str, str] = {}  # snapshot name (chain id) -> mounted layer name

    def mount(self, name: str, labels: Mapping[str, str]) -> Path | None:
        try:
            spec = spec_from_labels(labels)
            others = [d for d in image_layers(labels) if d != spec.digest]
            if others:  # containerd prepares them next, one at a time: open them now
                trio.from_thread.run_sync(
                    self._manager.preload, spec.ref, others, trio_token=self._token
                )
            mounted = trio.from_thread.run(self._manager.mount, spec, trio_token=self._token)
        except NotEligibleError as exc:
            metrics.SNAPSHOT_PREPARES.labels("fallback", exc.reason).inc()
            raise
        except errors.LazyImageError:
            metrics.SNAPSHOT_PREPARES.labels("fallback", "mount-failed").inc()
            raise
        with self._lock:
            previous = self._layers.get(name)
            self._layers[name] = spec.name
        if previous == spec.name:
            # Mounted again for the same snapshot (a retried Prepare): keep one reference.
            trio.from_thread.run(self._manager.unmount, spec.name, trio_token=self._token)
        metrics.SNAPSHOT_PREPARES.labels("remote", "estargz").inc()
        return mounted.path

    def check(self, name: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            layer = self._layers.get(name)
        if layer is None:
            raise errors.NotFoundError(f"snapshot {name} has no mounted layer")
        self._manager.get(layer)

    def unmount(self, name: str) -> None:
        with self._lock:
            layer = self._layers.pop(name, None)
        if layer is not None:
            trio.from_thread.run(self._manager.unmount, layer, trio_token=self._token)
