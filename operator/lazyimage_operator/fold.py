"""Folding the agents' reports into each LazyImage's status: pure functions.

A LazyImageNode says what its node was ordered (``spec.orders``) and what its agent did
(``status.images``). ``node_views`` cuts one node's object into a view per LazyImage, small
enough to keep in memory for every node; ``fold_status`` folds the views of one LazyImage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lazyimage.api import ImageReport, Order

__all__ = ["NodeImageView", "fold_status", "node_views", "ready_condition"]

# nodeStatuses lists at most this many nodes, the ones needing attention first: the counts
# cover every node, but a status rewritten every few seconds must not grow with the cluster.
MAX_NODE_STATUSES = 100
# A report's states, in the order nodeStatuses lists them.
_ATTENTION = {"Failed": 0, "Fetching": 1, "Pending": 2, "Ready": 3}


@dataclass(frozen=True)
class NodeImageView:
    """One node's order and report for one LazyImage."""

    node: str
    ordered_at: str | None  # issuedAt of the node's order; None if no longer ordered
    state: str  # the report's state, Pending if the report answers an older order
    digest: str = ""
    message: str = ""
    fetched_bytes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float | None = None
    updated: str = ""

    def to_status(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"node": self.node, "state": self.state}
        for key, value in (("digest", self.digest), ("message", self.message[:1024])):
            if value:
                raw[key] = value
        raw["fetchedBytes"] = self.fetched_bytes
        raw["cacheHits"] = self.cache_hits
        raw["cacheMisses"] = self.cache_misses
        if self.seconds is not None:
            raw["seconds"] = self.seconds
        if self.updated:
            raw["updated"] = self.updated
        return raw


def node_views(
    node: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[str, NodeImageView]:
    """The views of one LazyImageNode, keyed by LazyImage name."""
    ordered = {
        order.lazy_image: order.issued_at
        for raw in spec.get("orders") or []
        if isinstance(raw, Mapping) and (order := Order.from_dict(raw)) and order.lazy_image
    }
    reports = {
        report.lazy_image: report
        for raw in status.get("images") or []
        if isinstance(raw, Mapping) and (report := ImageReport.from_dict(raw)).lazy_image
    }
    views: dict[str, NodeImageView] = {}
    for name in ordered.keys() | reports.keys():
        ordered_at = ordered.get(name)
        found = reports.get(name)
        if found is None:
            views[name] = NodeImageView(node=node, ordered_at=ordered_at, state="Pending")
            continue
        state = found.state
        if state not in _ATTENTION or (ordered_at and found.issued_at != ordered_at):
            state = "Pending"
        views[name] = NodeImageView(
            node=node,
            ordered_at=ordered_at,
            state=state,
            digest=found.digest or "",
            message=found.message,
            fetched_bytes=found.fetched_bytes or 0,
            cache_hits=found.cache_hits or 0,
            cache_misses=found.cache_misses or 0,
            seconds=found.seconds,
            updated=found.updated,
        )
    return views


def ready_condition(
    ordered: int, ready: int, failed: int, previous: Iterable[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """The ``Ready`` condition (``kubectl wait --for=condition=Ready``): every ordered node has
    the image's priority zones. Its transition time moves only when its status changes."""
    if ordered and ready == ordered:
        status, reason, message = "True", "Prefetched", f"all {ordered} nodes are ready"
    elif failed:
        status, reason, message = "False", "PrefetchFailed", f"{failed} of {ordered} nodes failed"
    elif ordered:
        status, reason, message = "False", "Prefetching", f"{ready} of {ordered} nodes are ready"
    else:
        status, reason, message = "False", "NoOrders", "no node has been ordered to prefetch it"
    since = now
    for condition in previous:
        if condition.get("type") == "Ready" and condition.get("status") == status:
            since = str(condition.get("lastTransitionTime") or now)
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def fold_status(
    views: Iterable[NodeImageView],
    *,
    now: str,
    generation: int | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A LazyImage's status from its nodes' views. Nodes no longer ordered still count their
    cache hits, but not as ordered, ready or failed. ``previous`` is the current status, whose
    condition keeps its transition time."""
    views = sorted(views, key=lambda view: view.node)
    ordered = [view for view in views if view.ordered_at is not None]
    ready = sum(1 for view in ordered if view.state == "Ready")
    failed = sum(1 for view in ordered if view.state == "Failed")
    summary = f"{ready}/{len(ordered)}" + (f" ({failed} failed)" if failed else "")
    status: dict[str, Any] = {
        "summary": summary,
        "nodes": len(ordered),
        "ready": ready,
        "failed": failed,
        "fetchedBytes": sum(view.fetched_bytes for view in views),
        "cacheHits": sum(view.cache_hits for view in views),
        "cacheMisses": sum(view.cache_misses for view in views),
        "nodeStatuses": [
            view.to_status()
            for view in sorted(ordered, key=lambda view: _ATTENTION[view.state])[:MAX_NODE_STATUSES]
        ],
        "conditions": [
            ready_condition(
                len(ordered), ready, failed, (previous or {}).get("conditions") or [], now
            )
        ],
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status
