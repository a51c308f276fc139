"""What the operator orders, and when: plain functions the kopf handlers call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lazyimage.api import Order, SecretRef, format_time

from lazyimage_operator.fold import NodeImageView
from lazyimage_operator.naming import canonical_image, lazyimage_name
from lazyimage_operator.pods import PrewarmRequest
from lazyimage_operator.writer import ClusterWriter

__all__ = ["SelectorPrewarm", "prewarm_pod", "selector_orders"]


async def prewarm_pod(writer: ClusterWriter, request: PrewarmRequest) -> list[Order]:
    """Order the pod's node to prefetch the pod's images, and make their LazyImages. Returns
    the orders written; images the node holds fresh orders for cost no request."""
    now = format_time(writer.now())
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
) -> dict[str, Order]:
    """The orders a selector LazyImage still needs: matching nodes not yet ordered. A node is
    ordered once; pods bound to it re-order a stale image themselves."""
    ordered = {view.node for view in views if view.ordered_at is not None}
    return {
        node: Order(
            prewarm.image,
            prewarm.name,
            format_time(now),
            f"lazyimage {prewarm.name}",
            prewarm.pull_secrets,
        )
        for node, labels in sorted(node_labels.items())
        if node not in ordered and prewarm.matches(labels)
    }
