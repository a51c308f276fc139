"""The watch of LazyImageNodes, from a fake source: the book is complete only once the list is
in, and orders wait for it; deletions leave the book; reports with profiles are handed on, and
only profiles of LazyImages already seen are learned. Against a real API server:
tests/integration/operator (test_handlers, test_profiles)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lazyimage.api import Order, format_time
from lazyimage.kube import ResourcePath, WatchEvent
from lazyimage_operator.handlers import learn_profiles
from lazyimage_operator.lazynodewatch import follow_lazyimage_nodes
from lazyimage_operator.naming import lazyimage_name
from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.statusloop import LazyImageView, StatusLoop
from lazyimage_operator.writer import ClusterWriter

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the operator runs on kopf's asyncio loop


def _lazyimage_node(name: str, version: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": version},
        "spec": {"orders": []},
        "status": status,
    }


class FakeSource:
    """A list answer held until ``release`` is set, then watch events."""

    def __init__(self, items: list[dict[str, Any]], *events: WatchEvent) -> None:
        self.items = items
        self.events = events
        self.release = asyncio.Event()

    async def list(self, path: ResourcePath, **_: Any) -> dict[str, Any]:
        await self.release.wait()
        return {"items": self.items, "metadata": {"resourceVersion": "1"}}

    async def watch_collection(
        self, path: ResourcePath, **_: Any
    ) -> AsyncGenerator[WatchEvent, None]:
        for item in self.items:
            yield WatchEvent("ADDED", item)
        for event in self.events:
            yield event


class FakeClient:
    """Enough of KubeClient for the writer: LazyImageNodes and profile writes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def create(self, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create {body['metadata']['name']}")
        return {**body, "metadata": {**body["metadata"], "resourceVersion": "50"}}

    async def merge_patch(self, path: Any, name: str, patch: dict[str, Any], **_: Any) -> Any:
        self.calls.append(f"patch {path.plural}/{name}")
        return {}

    async def get(self, path: Any, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "uid": "u"}}


def _writer(client: FakeClient, book: NodeBook) -> ClusterWriter:
    return ClusterWriter(
        client,  # type: ignore[arg-type]
        book,
        refresh=timedelta(minutes=5),
        limit=64,
        clock=lambda: NOW,
    )


async def test_orders_wait_until_every_lazyimage_node_is_listed() -> None:
    listed = _lazyimage_node("n1", "7")
    source = FakeSource([listed])
    book = NodeBook(listed=False)
    client = FakeClient()
    writer = _writer(client, book)
    order = Order("reg/app:1", "reg-app-1", format_time(NOW), "pod ns/p", ())

    async def never(node: str, status: Mapping[str, Any]) -> None:
        raise AssertionError("no profiles here")

    async with asyncio.TaskGroup() as group:
        ordering = group.create_task(writer.order("n1", [order]))
        watching = group.create_task(follow_lazyimage_nodes(source, book, never))
        await asyncio.sleep(0.05)
        assert not ordering.done() and client.calls == []  # held: the book is not complete
        source.release.set()
        assert await ordering
        await watching
    # n1 was listed, so its order is a patch of the listed object, not a create.
    assert client.calls == ["patch lazyimagenodes/n1"]


async def test_deletions_leave_the_book_and_profiles_are_handed_on() -> None:
    profiles = [{"image": "reg/app:1", "recorded": "2026-11-28T12:00:00.000000Z", "layers": []}]
    source = FakeSource(
        [_lazyimage_node("n1", "3"), _lazyimage_node("n2", "4")],
        WatchEvent("MODIFIED", _lazyimage_node("n1", "5", profiles=profiles)),
        WatchEvent("DELETED", _lazyimage_node("n2", "6")),
        WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "6"}}),
    )
    source.release.set()
    book = NodeBook(listed=False)
    reports: list[tuple[str, Any]] = []

    async def reported(node: str, status: Mapping[str, Any]) -> None:
        reports.append((node, status["profiles"]))

    await follow_lazyimage_nodes(source, book, reported)
    known = book.known("n1")
    assert known is not None and known.version == "5"
    assert book.known("n2") is None
    assert reports == [("n1", profiles)]


async def test_only_profiles_of_lazyimages_seen_are_learned() -> None:
    client = FakeClient()
    book = NodeBook()
    writer = _writer(client, book)
    statuses = StatusLoop(client, writer, book, interval=1.0)  # type: ignore[arg-type]
    old, new = "2026-11-28T11:00:00.000000Z", "2026-11-28T12:00:00.000000Z"
    seen = lazyimage_name("reg/seen:1")
    statuses.see(seen, LazyImageView({}, {"profile": {"recorded": old}}, 1))
    status = {
        "profiles": [
            {"image": "reg/seen:1", "recorded": new, "layers": [{"digest": "d"}]},
            {"image": "reg/unseen:1", "recorded": new, "layers": [{"digest": "d"}]},
        ]
    }
    learned: dict[str, str] = {}
    await learn_profiles(writer, statuses, learned, "n1", status)
    assert client.calls == [f"patch lazyimages/{seen}"]
    assert learned == {seen: new}
    await learn_profiles(writer, statuses, learned, "n1", status)  # written already: no request
    assert client.calls == [f"patch lazyimages/{seen}"]
