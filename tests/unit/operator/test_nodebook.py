"""The one record of each LazyImageNode: versions only move forward, and the views per
LazyImage follow each node's latest object and its deletion."""

from __future__ import annotations

from typing import Any

from lazyimage_operator.nodebook import NodeBook

T0 = "2026-11-28T12:00:00.000000Z"


def _node(version: str, *ordered: str, reports: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"resourceVersion": version},
        "spec": {
            "orders": [{"image": f"reg/{li}", "lazyImage": li, "issuedAt": T0} for li in ordered]
        },
        "status": {
            "images": [
                {"image": f"reg/{li}", "lazyImage": li, "issuedAt": T0, "state": state}
                for li, state in (reports or {}).items()
            ]
        },
    }


def _states(book: NodeBook, lazyimage: str) -> dict[str, str]:
    return {view.node: view.state for view in book.views_of(lazyimage)}


def test_views_follow_each_nodes_latest_object() -> None:
    book = NodeBook()
    book.observe("n1", _node("5", "a", "b"))
    book.observe("n2", _node("7", "a", reports={"a": "Ready"}))
    assert _states(book, "a") == {"n1": "Pending", "n2": "Ready"}
    assert _states(book, "b") == {"n1": "Pending"}
    known = book.known("n1")
    assert known is not None and known.version == "5"
    assert [raw["lazyImage"] for raw in known.orders] == ["a", "b"]

    # n1 is no longer ordered for b, and reports a.
    book.observe("n1", _node("9", "a", reports={"a": "Failed"}))
    assert _states(book, "a") == {"n1": "Failed", "n2": "Ready"}
    assert book.views_of("b") == []


def test_an_older_object_changes_nothing() -> None:
    book = NodeBook()
    book.observe("n1", _node("10", "a", reports={"a": "Ready"}))
    book.observe("n1", _node("9", "a", "b"))  # a watch event from before our own write
    known = book.known("n1")
    assert known is not None and known.version == "10"
    assert _states(book, "a") == {"n1": "Ready"}
    assert book.views_of("b") == []
    book.observe("n1", _node("", "b"))  # no version: nothing to order it by
    assert book.views_of("b") == []


def test_a_deleted_node_is_forgotten() -> None:
    book = NodeBook()
    book.observe("n1", _node("3", "a"))
    book.observe("n2", _node("4", "a"))
    book.observe("n1", None)
    assert book.known("n1") is None
    assert _states(book, "a") == {"n2": "Pending"}
    book.observe("n1", _node("2", "b"))  # made again: any version is news
    assert _states(book, "b") == {"n1": "Pending"}
