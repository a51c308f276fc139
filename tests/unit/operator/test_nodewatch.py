"""The watch of Nodes keeps each Node's uid and labels, from a fake event source; against a
real API server the selector and owner tests in tests/integration/operator cover it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from lazyimage.kube import KubeError, ResourcePath, WatchEvent
from lazyimage_operator.nodewatch import NODES, NodeDirectory, follow_nodes
from lazyimage_operator.watching import WATCH_PATIENCE

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the operator runs on kopf's asyncio loop


def _node(name: str, uid: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "labels": labels}, "status": {}}


class FakeSource:
    def __init__(self, *events: WatchEvent, then: Exception | None = None) -> None:
        self.events = events
        self.then = then
        self.watched: list[tuple[ResourcePath, int | None]] = []

    async def watch_collection(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        max_failures: int | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        self.watched.append((path, max_failures))
        for event in self.events:
            yield event
        if self.then is not None:
            raise self.then


async def test_the_directory_follows_nodes_added_changed_and_deleted() -> None:
    source = FakeSource(
        WatchEvent("ADDED", _node("n1", "u1", zone="a")),
        WatchEvent("ADDED", _node("n2", "u2", zone="b")),
        WatchEvent("MODIFIED", _node("n1", "u1", zone="c", gpu="yes")),
        WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "9"}}),
        WatchEvent("DELETED", _node("n2", "u2", zone="b")),
    )
    directory = NodeDirectory()
    await follow_nodes(source, directory)
    assert source.watched == [(NODES, WATCH_PATIENCE)]
    assert directory.labels() == {"n1": {"zone": "c", "gpu": "yes"}}
    assert (directory.uid("n1"), directory.uid("n2")) == ("u1", None)


async def test_a_node_without_labels_or_name_is_taken_as_it_is() -> None:
    source = FakeSource(
        WatchEvent("ADDED", {"metadata": {"name": "bare", "uid": "u"}}),
        WatchEvent("ADDED", {"metadata": {"uid": "nameless"}}),
    )
    directory = NodeDirectory()
    await follow_nodes(source, directory)
    assert directory.labels() == {"bare": {}}
    assert directory.uid("bare") == "u"


async def test_a_failing_watch_ends_the_follower_with_its_error() -> None:
    directory = NodeDirectory()
    source = FakeSource(WatchEvent("ADDED", _node("n1", "u1")), then=KubeError("forbidden"))
    with pytest.raises(KubeError, match="forbidden"):
        await follow_nodes(source, directory)
    assert directory.uid("n1") == "u1"  # what came before the failure is kept
