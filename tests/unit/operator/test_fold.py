"""Folding LazyImageNode reports into LazyImage statuses."""

from __future__ import annotations

from typing import Any

from lazyimage_operator.fold import fold_status, node_views

T0 = "2026-11-28T12:00:00.000000Z"
T1 = "2026-11-28T12:05:00.000000Z"
NOW = "2026-11-28T12:06:00Z"


def _node(orders: list[tuple[str, str]], reports: list[dict[str, Any]]) -> tuple[Any, Any]:
    spec = {
        "orders": [{"image": f"img-{li}", "lazyImage": li, "issuedAt": at} for li, at in orders]
    }
    return spec, {"images": reports}


def _report(li: str, state: str, at: str, **extra: Any) -> dict[str, Any]:
    return {"image": f"img-{li}", "lazyImage": li, "state": state, "issuedAt": at, **extra}


def test_views_take_the_report_that_answers_the_current_order() -> None:
    spec, status = _node(
        [("a", T1), ("b", T0)],
        [_report("a", "Ready", T0, cacheHits=5), _report("b", "Ready", T0, fetchedBytes=10)],
    )
    views = node_views("n1", spec, status)
    assert views["a"].state == "Pending"  # its report answers the older order
    assert views["a"].cache_hits == 5
    assert views["b"].state == "Ready" and views["b"].fetched_bytes == 10


def test_a_report_without_an_order_still_counts_its_hits() -> None:
    spec, status = _node([], [_report("a", "Ready", T0, cacheHits=3, cacheMisses=1)])
    view = node_views("n1", spec, status)["a"]
    assert view.ordered_at is None
    folded = fold_status([view], now=NOW)
    assert folded["nodes"] == 0 and folded["cacheHits"] == 3 and folded["cacheMisses"] == 1
    assert folded["conditions"][0]["reason"] == "NoOrders"


def test_fold_counts_ready_and_failed_nodes() -> None:
    views = [
        node_views(node, *_node([("a", T0)], [_report("a", state, T0, fetchedBytes=100)]))["a"]
        for node, state in (("n2", "Ready"), ("n1", "Failed"), ("n3", "Fetching"))
    ]
    folded = fold_status(views, now=NOW, generation=4)
    assert folded["summary"] == "1/3 (1 failed)"
    assert (folded["nodes"], folded["ready"], folded["failed"]) == (3, 1, 1)
    assert folded["fetchedBytes"] == 300
    # Nodes needing attention first: failed, then still fetching, then ready.
    assert [s["node"] for s in folded["nodeStatuses"]] == ["n1", "n3", "n2"]
    assert folded["observedGeneration"] == 4
    assert folded["conditions"][0]["status"] == "False"


def test_ready_condition_keeps_its_transition_time_until_it_changes() -> None:
    views = [node_views("n1", *_node([("a", T0)], [_report("a", "Ready", T0)]))["a"]]
    first = fold_status(views, now=T0)
    assert first["conditions"][0]["status"] == "True"
    again = fold_status(views, now=T1, previous=first)
    assert again["conditions"][0]["lastTransitionTime"] == T0
    pending = [node_views("n1", *_node([("a", T1)], [_report("a", "Ready", T0)]))["a"]]
    changed = fold_status(pending, now=T1, previous=again)
    assert changed["conditions"][0]["status"] == "False"
    assert changed["conditions"][0]["lastTransitionTime"] == T1


def test_garbage_in_reports_is_ignored_not_trusted() -> None:
    spec, status = _node(
        [("a", T0)],
        [_report("a", "Bogus", T0, fetchedBytes=-5, cacheHits="many", seconds="x")],
    )
    view = node_views("n1", spec, status)["a"]
    assert view.state == "Pending"
    assert (view.fetched_bytes, view.cache_hits, view.seconds) == (0, 0, None)


def test_node_statuses_are_capped_but_the_counts_cover_every_node() -> None:
    views = [
        node_views(f"n{i:04}", *_node([("a", T0)], [_report("a", "Ready", T0)]))["a"]
        for i in range(250)
    ]
    views.append(node_views("z-failed", *_node([("a", T0)], [_report("a", "Failed", T0)]))["a"])
    folded = fold_status(views, now=NOW)
    assert folded["nodes"] == 251 and folded["ready"] == 250 and folded["failed"] == 1
    assert len(folded["nodeStatuses"]) == 100
    assert folded["nodeStatuses"][0]["node"] == "z-failed"
