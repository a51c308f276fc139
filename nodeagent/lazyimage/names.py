"""Every string that other parts depend on (docs/contracts.md), in one place."""

from __future__ import annotations

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_REGISTRY_CONFIG",
    "DEFAULT_SOCKET",
    "DEFAULT_STATE_DIR",
    "LABEL_CRI_IMAGE_LAYERS",
    "LABEL_CRI_IMAGE_REF",
    "LABEL_CRI_LAYER_DIGEST",
    "LABEL_CRI_MANIFEST_DIGEST",
    "LABEL_SNAPSHOT_REF",
    "LABEL_STARGZ_DIGEST",
    "LABEL_STARGZ_REFERENCE",
    "LAZYIMAGE_KIND",
    "LAZYIMAGE_NODE_KIND",
    "LAZYIMAGE_NODE_PLURAL",
    "LAZYIMAGE_PLURAL",
    "MANAGED_BY_LABEL",
    "METRIC_PREFIX",
    "NO_PREFETCH_LANDMARK",
    "POD_PREWARM_ANNOTATION",
    "PREFETCH_LANDMARK",
    "SNAPSHOTTER_NAME",
    "SOURCE_DIGEST_ANNOTATION",
    "SOURCE_SIZE_ANNOTATION",
    "TOC_DIGEST_ANNOTATION",
    "TOC_TAR_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
]

# eStargz format
TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
DEFAULT_CHUNK_SIZE = 4 << 20

# Layer descriptor annotations
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"

# Set by `lazyimage convert` on each converted layer, so `inspect` can show what it cost
SOURCE_DIGEST_ANNOTATION = "io.lazyimage.source.digest"
SOURCE_SIZE_ANNOTATION = "io.lazyimage.source.size"

# Snapshot labels set by containerd and its CRI plugin
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
LABEL_CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"
# Set by ctr-remote / nerdctl lazy pulls (the reference's own labels)
LABEL_STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
LABEL_STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"

# Kubernetes
API_GROUP = "lazyimage.io"
API_VERSION = "v1alpha1"
POD_PREWARM_ANNOTATION = "lazyimage.io/prewarm"
LAZYIMAGE_KIND = "LazyImage"
LAZYIMAGE_PLURAL = "lazyimages"
LAZYIMAGE_NODE_KIND = "LazyImageNode"
LAZYIMAGE_NODE_PLURAL = "lazyimagenodes"
# On LazyImage objects the operator made for prewarmed pods' images (not the ones users made)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

# Node agent
SNAPSHOTTER_NAME = "lazyimage"
DEFAULT_SOCKET = "/run/lazyimage/snapshotter.sock"
DEFAULT_STATE_DIR = "/var/lib/lazyimage"
# containerd's per-registry configuration (its config_path): HOST/hosts.toml and certificates.
DEFAULT_REGISTRY_CONFIG = "/etc/containerd/certs.d"
METRIC_PREFIX = "lazyimage_"
