"""The one contract on a LazyImageNode: what the operator writes the agent reads, and what the
agent reports the operator folds, through the same types (lazyimage.api)."""

from __future__ import annotations

from datetime import UTC, datetime

from lazyimage.agent.orders import ImageState
from lazyimage.agent.prewarm import PrewarmResult
from lazyimage.api import ImageReport, Order, SecretRef, format_time, parse_time
from lazyimage_operator.fold import node_views

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def test_an_order_survives_the_trip() -> None:
    order = Order("reg/app:1", "li-app", format_time(NOW), "pod ns/web", (SecretRef("ns", "pull"),))
    raw = order.to_dict()
    assert raw["issuedAt"] == "2026-11-28T12:00:00.123456Z"
    assert raw["pullSecrets"] == [{"namespace": "ns", "name": "pull"}]
    assert Order.from_dict(raw) == order
    assert parse_time(raw["issuedAt"]) == NOW
    assert Order.from_dict({"image": "reg/app:1"}) is None  # no issuedAt


def test_the_agents_report_is_what_the_operator_folds() -> None:
    order = Order("reg/app:1", "li-app", format_time(NOW))
    result = PrewarmResult(
        digest="sha256:abc",
        layers=("sha256:l1",),
        layer_count=1,
        skipped=0,
        zone_bytes=10,
        fetched_bytes=20,
        seconds=1.23456,
    )
    state = ImageState(order, state="Ready", result=result, updated=format_time(NOW))
    raw = state.to_status(lambda layers: (3, 1))
    assert raw["seconds"] == 1.235 and raw["cacheHits"] == 3 and "message" not in raw
    assert ImageReport.from_dict(raw).to_dict() == raw
    views = node_views("n1", {"orders": [order.to_dict()]}, {"images": [raw]})
    view = views["li-app"]
    assert (view.state, view.digest, view.fetched_bytes, view.cache_hits, view.cache_misses) == (
        "Ready",
        "sha256:abc",
        20,
        3,
        1,
    )
    # A report on an older order of the same image reads as Pending.
    newer = Order("reg/app:1", "li-app", format_time(NOW.replace(second=5)))
    assert node_views("n1", {"orders": [newer.to_dict()]}, {"images": [raw]})["li-app"].state == (
        "Pending"
    )
