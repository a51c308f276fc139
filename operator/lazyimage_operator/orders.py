"""Prefetch orders on a LazyImageNode's spec: the pure merge the operator writes through.

An order names one image. Re-ordering an image the node already holds an order for changes
nothing unless the order has gone stale (``refresh``): a new ``issuedAt`` asks the agent to
prefetch again, which costs a cached node nothing but brings back evicted chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from lazyimage.api import Order, SecretRef, parse_time

__all__ = ["merge_orders"]


def _same_target(current: Mapping[str, Any], wanted: Order) -> bool:
    secrets = {SecretRef.from_dict(raw) for raw in current.get("pullSecrets") or []}
    return current.get("lazyImage") == wanted.lazy_image and secrets >= set(wanted.pull_secrets)


def _fresh(current: Mapping[str, Any], now: datetime, refresh: timedelta) -> bool:
    issued = parse_time(str(current.get("issuedAt", "")))
    return issued is not None and now - issued < refresh


def merge_orders(
    current: Sequence[Mapping[str, Any]],
    wanted: Sequence[Order],
    *,
    now: datetime,
    refresh: timedelta,
    limit: int,
) -> list[dict[str, Any]] | None:
    """The orders after adding ``wanted``, or None when nothing needs writing.

    An image already ordered keeps its order if it targets the same LazyImage with (at least)
    the same secrets and is fresher than ``refresh``; otherwise its order is replaced. Past
    ``limit`` orders, the oldest go first.
    """
    merged = {str(raw.get("image")): dict(raw) for raw in current if raw.get("image")}
    changed = False
    for order in wanted:
        existing = merged.get(order.image)
        if existing and _same_target(existing, order) and _fresh(existing, now, refresh):
            continue
        if existing:
            # Keep secrets an earlier order named: another pod may still need them.
            kept = {SecretRef.from_dict(raw) for raw in existing.get("pullSecrets") or []}
            if existing.get("lazyImage") == order.lazy_image:
                order = Order(
                    order.image,
                    order.lazy_image,
                    order.issued_at,
                    order.reason,
                    tuple(kept | set(order.pull_secrets)),
                )
        merged[order.image] = order.to_dict()
        changed = True
    if len(merged) > limit:
        newest = sorted(
            merged.values(),
            key=lambda raw: (
                parse_time(str(raw.get("issuedAt", ""))) or datetime.min.replace(tzinfo=UTC)
            ),
            reverse=True,
        )[:limit]
        keep = {raw["image"] for raw in newest}
        merged = {image: raw for image, raw in merged.items() if image in keep}
        changed = True
    return list(merged.values()) if changed else None
