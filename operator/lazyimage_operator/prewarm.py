"""What the operator orders, and when: plain functions the kopf handlers call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lazyimage_operator.fold import NodeImageView
from lazyimage_operator.naming import canonical_image, lazyimage_name
from lazyimage_operator.orders import Order, parse_time
from lazyimage_operator.pods import PrewarmRequest, SecretRef
from lazyimage_operator.writer import ClusterWriter

__all__ = ["SelectorPrewarm", "fresh_nodes", "prewarm_pod", "selector_orders"]


def fresh_nodes(views: Iterable[NodeImageView], now: datetime, refresh: timedelta) -> set[str]:
    """Nodes already holding an order for the LazyImage that is fresher than ``refresh``."""
    fresh: set[str] = set()
    for view in views:
        issued = parse_time(view.ordered_at) if view.ordered_at else None
        if issued is not None and now - issued < refresh:
            fresh.add(view.node)
    return fresh


async def prewarm_pod(writer: ClusterWriter, request: PrewarmRequest) -> list[Order]:
    """Order the pod's node to prefetch the pod's images, and make their LazyImages. Returns
    the orders written; images the node holds fresh orders for cost no request."""
    now = writer.now()
    orders = [
        Order(image, lazyimage_name(image), now, f"pod {request.pod}", request.pull_secrets)
        for image in request.images
    ]
    if not await writer.order(request.node, orders):
        return []
    for order in orders:
        await writer.ensure_lazyimage(order.lazy_image, order.image)
    return orders


@dataclass(frozen=True)
class SelectorPrewarm:
    """A LazyImage that asks for every node matching its nodeSelector."""

    name: str
    image: str
    node_selector: tuple[tuple[str, str], ...]
    pull_secrets: tuple[SecretRef, ...]

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> SelectorPrewarm | None:
        selector = spec.get("nodeSelector")
        image = spec.get("image")
        if selector is None or not image:
            return None
        return cls(
            name=name,
            image=canonical_image(str(image)),
            node_selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
            pull_secrets=tuple(SecretRef.from_dict(raw) for raw in spec.get("pullSecrets") or []),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.node_selector)


def selector_orders(
    prewarm: SelectorPrewarm,
    node_labels: Mapping[str, Mapping[str, str]],
    views: Iterable[NodeImageView],
    now: datetime,
    refresh: timedelta,
) -> dict[str, Order]:
    """The orders a selector LazyImage still needs: matching nodes without a fresh order."""
    fresh = fresh_nodes(views, now, refresh)
    return {
        node: Order(
            prewarm.image, prewarm.name, now, f"lazyimage {prewarm.name}", prewarm.pull_secrets
        )
        for node, labels in sorted(node_labels.items())
        if node not in fresh and prewarm.matches(labels)
    }
