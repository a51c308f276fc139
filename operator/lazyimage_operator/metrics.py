"""The operator's Prometheus metrics, in their own registry, served by ``--metrics``."""

from __future__ import annotations

from lazyimage import names
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = [
    "LAZYIMAGE_NODE_WATCH_RESTARTS",
    "NODE_WATCH_RESTARTS",
    "ORDERS",
    "ORDER_SECONDS",
    "POD_EVENT_ERRORS",
    "POD_WATCH_RESTARTS",
    "PROFILES_LEARNED",
    "REGISTRY",
    "STATUS_WRITES",
    "serve_metrics",
]

REGISTRY = CollectorRegistry(auto_describe=True)
P = f"{names.METRIC_PREFIX}operator_"

ORDERS = Counter(
    f"{P}orders",
    "Prefetch orders for a node and an image, by what asked (pod, selector) and what came of it "
    "(written; fresh: the node already held a fresh order; failed; not-lazy: the pod is of no "
    "RuntimeClass given by --lazy-runtime-class).",
    ["source", "result"],
    registry=REGISTRY,
)
ORDER_SECONDS = Histogram(
    f"{P}order_seconds",
    "From a bound pod's event reaching the operator to its node's orders being written.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
STATUS_WRITES = Counter(
    f"{P}status_writes", "LazyImage statuses folded and written.", registry=REGISTRY
)
PROFILES_LEARNED = Counter(
    f"{P}profiles_learned",
    "Startup profiles taken from a node's report into a LazyImage.",
    registry=REGISTRY,
)

POD_EVENT_ERRORS = Counter(
    f"{P}pod_event_errors",
    "Pod events whose handling failed with an unexpected error (logged with its traceback); "
    "the watch goes on. An API server's refusal counts as a failed order instead.",
    registry=REGISTRY,
)
STATUS_LOOP_RESTARTS = Counter(
    f"{P}status_loop_restarts",
    "Times the loop that folds the LazyImages' status failed or ended and was started again; "
    "if it keeps failing, the liveness probe fails.",
    registry=REGISTRY,
)
POD_WATCH_RESTARTS = Counter(
    f"{P}pod_watch_restarts",
    "Times the watch of bound pods failed or ended and was started again; if it keeps "
    "failing, the liveness probe fails.",
    registry=REGISTRY,
)

NODE_WATCH_RESTARTS = Counter(
    f"{P}node_watch_restarts",
    "Times the watch of Nodes failed or ended and was started again; if it keeps failing, the "
    "liveness probe fails.",
    registry=REGISTRY,
)

LAZYIMAGE_NODE_WATCH_RESTARTS = Counter(
    f"{P}lazyimage_node_watch_restarts",
    "Times the watch of LazyImageNodes failed or ended and was started again; if it keeps "
    "failing, the liveness probe fails.",
    registry=REGISTRY,
)


def serve_metrics(listen: str) -> None:
    """Serve /metrics on ``listen`` (HOST:PORT) from a thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
