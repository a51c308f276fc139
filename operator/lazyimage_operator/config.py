"""The operator's settings, from its command line."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

__all__ = ["OperatorConfig"]


@dataclass(frozen=True)
class OperatorConfig:
    kubeconfig: Path | None = None
    # A pod bound to a node whose order for the image is older than this re-orders it.
    order_refresh: timedelta = timedelta(minutes=5)
    # At most this many images are ordered per node; the oldest orders go first.
    orders_per_node: int = 64
    # How often each LazyImage's status is folded and its selector orders checked.
    status_interval: float = 2.0
    # Only pods of these RuntimeClasses are prewarmed (their pulls are lazy); empty: every pod,
    # for nodes whose containerd uses the lazyimage snapshotter for all pods.
    lazy_runtime_classes: frozenset[str] = frozenset()
    liveness: str | None = None
    metrics: str | None = None  # HOST:PORT to serve /metrics on
