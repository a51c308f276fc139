"""Merging prefetch orders into a LazyImageNode's spec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lazyimage.api import Order, SecretRef, format_time, parse_time
from lazyimage_operator.orders import merge_orders

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
REFRESH = timedelta(minutes=5)


def _order(image: str, at: datetime = NOW, *secrets: SecretRef) -> Order:
    return Order(image, f"li-{image}", format_time(at), reason="pod shop/web", pull_secrets=secrets)


def test_a_new_image_is_ordered() -> None:
    merged = merge_orders([], [_order("a")], now=NOW, refresh=REFRESH, limit=8)
    assert merged == [
        {"image": "a", "lazyImage": "li-a", "issuedAt": format_time(NOW), "reason": "pod shop/web"}
    ]


def test_a_fresh_order_for_the_same_image_writes_nothing() -> None:
    current = [_order("a", NOW - timedelta(minutes=1)).to_dict()]
    assert merge_orders(current, [_order("a")], now=NOW, refresh=REFRESH, limit=8) is None


def test_a_stale_order_is_reissued() -> None:
    current = [_order("a", NOW - timedelta(minutes=10)).to_dict()]
    merged = merge_orders(current, [_order("a")], now=NOW, refresh=REFRESH, limit=8)
    assert merged is not None and merged[0]["issuedAt"] == format_time(NOW)


def test_new_secrets_reissue_and_keep_the_old_ones() -> None:
    old, new = SecretRef("ns", "old"), SecretRef("ns", "new")
    current = [_order("a", NOW - timedelta(minutes=1), old).to_dict()]
    merged = merge_orders(current, [_order("a", NOW, new)], now=NOW, refresh=REFRESH, limit=8)
    assert merged is not None
    assert merged[0]["pullSecrets"] == [new.to_dict(), old.to_dict()]
    # A later order with a subset of the secrets changes nothing.
    assert merge_orders(merged, [_order("a", NOW, old)], now=NOW, refresh=REFRESH, limit=8) is None


def test_past_the_limit_the_oldest_orders_go() -> None:
    current = [_order(str(i), NOW - timedelta(minutes=30 - i)).to_dict() for i in range(4)]
    merged = merge_orders(current, [_order("new")], now=NOW, refresh=REFRESH, limit=3)
    assert merged is not None
    assert [raw["image"] for raw in merged] == ["2", "3", "new"]


def test_times_round_trip_with_microseconds() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert format_time(moment) == "2026-01-02T03:04:05.678901Z"
    assert parse_time(format_time(moment)) == moment
    assert parse_time("not a time") is None
