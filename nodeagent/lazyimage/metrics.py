"""Every prometheus metric the node agent exports, in one registry.

Labels are bounded: ``layer`` is a layer digest (one per mounted layer, removed on unmount),
never a file path. The agent's HTTP endpoint serves ``REGISTRY``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lazyimage.names import METRIC_PREFIX

__all__ = [
    "CACHE_BYTES",
    "CACHE_CHUNKS",
    "CACHE_DISCARDED",
    "CACHE_EVICTIONS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CACHE_WRITE_ERRORS",
    "FETCHED_BYTES",
    "FETCH_DURATION",
    "FETCH_HEDGES",
    "FETCH_IN_FLIGHT",
    "FETCH_RETRIES",
    "FUSE_OPERATION_DURATION",
    "LAYER_FETCHED_RATIO",
    "ORDER_RUNNER_RESTARTS",
    "PREWARM_ORDERS",
    "PREWARM_SECONDS",
    "REGISTRY",
    "SNAPSHOT_PREPARES",
    "VERIFICATION_FAILURES",
    "forget_layer",
]

REGISTRY = CollectorRegistry(auto_describe=True)
P = METRIC_PREFIX

FETCHED_BYTES = Counter(
    f"{P}fetched_bytes",
    "Compressed bytes fetched from registries, by layer and reason "
    "(demand: a read waited for them; readahead: the files after a demand miss, fetched "
    "with it; prefetch: the priority zone; background: fill; toc).",
    ["layer", "reason"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    f"{P}cache_hits",
    "Chunk reads served from the on-disk chunk cache.",
    ["layer"],
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    f"{P}cache_misses", "Chunk reads that had to be fetched.", ["layer"], registry=REGISTRY
)
VERIFICATION_FAILURES = Counter(
    f"{P}chunk_verification_failures",
    "Chunks whose content did not match their TOC digest (never served).",
    ["layer"],
    registry=REGISTRY,
)
FETCH_RETRIES = Counter(
    f"{P}fetch_retries",
    "Range requests retried after an error or a stall.",
    ["layer"],
    registry=REGISTRY,
)
FETCH_HEDGES = Counter(
    f"{P}fetch_hedges",
    "Range requests that had produced no byte in time and were sent a second time.",
    ["layer"],
    registry=REGISTRY,
)
FETCH_DURATION = Histogram(
    f"{P}fetch_duration_seconds",
    "Time of one range request to a registry, by reason.",
    ["reason"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
FETCH_IN_FLIGHT = Gauge(
    f"{P}fetch_in_flight", "Range requests currently in flight.", registry=REGISTRY
)
FUSE_OPERATION_DURATION = Histogram(
    f"{P}fuse_operation_duration_seconds",
    "Time the agent spent answering a FUSE operation, by operation.",
    ["operation"],
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
CACHE_BYTES = Gauge(f"{P}cache_bytes", "Bytes held in the chunk cache.", registry=REGISTRY)
CACHE_CHUNKS = Gauge(f"{P}cache_chunks", "Chunks held in the chunk cache.", registry=REGISTRY)
CACHE_EVICTIONS = Counter(
    f"{P}cache_evictions", "Chunks evicted to keep the cache under its cap.", registry=REGISTRY
)
CACHE_DISCARDED = Counter(
    f"{P}cache_discarded_chunks",
    "Chunk files found damaged (torn, changed) or unreadable on disk and removed; "
    "the chunk is fetched again.",
    ["reason"],
    registry=REGISTRY,
)
CACHE_WRITE_ERRORS = Counter(
    f"{P}cache_write_errors",
    "Chunks served without being cached because the cache could not store them.",
    ["errno"],
    registry=REGISTRY,
)
LAYER_FETCHED_RATIO = Gauge(
    f"{P}layer_fetched_ratio",
    "Fraction of a layer's compressed bytes fetched or found in the cache.",
    ["layer"],
    registry=REGISTRY,
)

SNAPSHOT_PREPARES = Counter(
    f"{P}snapshot_prepares",
    "Layer snapshots containerd asked for: mounted remotely (lazily), or left to a normal "
    "download (fallback), by reason.",
    ["result", "reason"],
    registry=REGISTRY,
)

PREWARM_ORDERS = Counter(
    f"{P}prewarm_orders",
    "Prefetch orders from the node's LazyImageNode carried out, by result (ready, failed).",
    ["result"],
    registry=REGISTRY,
)
ORDER_RUNNER_RESTARTS = Counter(
    f"{P}order_runner_restarts",
    "Times the follower of the node's prefetch orders failed and was started again (the "
    "agent's mounts do not depend on it).",
    registry=REGISTRY,
)
PREWARM_SECONDS = Histogram(
    f"{P}prewarm_seconds",
    "Time to prewarm an ordered image: its manifest, each layer's TOC and priority zone, and "
    "the files of its learned startup profile.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)

_PER_LAYER = (
    FETCHED_BYTES,
    CACHE_HITS,
    CACHE_MISSES,
    VERIFICATION_FAILURES,
    FETCH_RETRIES,
    FETCH_HEDGES,
    LAYER_FETCHED_RATIO,
)


def forget_layer(layer: str) -> None:
    """Drop a layer's label sets when it is unmounted, so label cardinality stays bounded."""
    for family in _PER_LAYER:
        for labels in list(family._metrics):
            if labels and labels[0] == layer:
                family.remove(*labels)
