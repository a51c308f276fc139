"""The writer's request economy: orders a node holds cost nothing, a burst for one node is one
write, and a conflict is read again and retried. The client is a small fake; the writer runs
against a real API server in tests/integration/operator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lazyimage.api import Order, format_time
from lazyimage.kube import ConflictError, NotFoundError
from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.writer import ClusterWriter

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class FakeClient:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.version = 1
        self.conflict_next = False

    def _stored(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = {"metadata": {"name": name, "resourceVersion": str(self.version)}, "spec": spec}
        self.objects[name] = obj
        return obj

    async def get(self, path: Any, name: str) -> dict[str, Any]:
        self.calls.append(f"get {path.plural}/{name}")
        await asyncio.sleep(0.01)
        if path.plural != "lazyimagenodes" or name not in self.objects:
            raise NotFoundError(f"{name} not found")
        return self.objects[name]

    async def create(self, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create {path.plural}")
        await asyncio.sleep(0.01)
        if body["metadata"]["name"] in self.objects:
            raise ConflictError("already exists")
        return self._stored(body["metadata"]["name"], body.get("spec", {}))

    async def merge_patch(self, path: Any, name: str, patch: dict[str, Any], **_: Any) -> Any:
        self.calls.append(f"patch {name}")
        await asyncio.sleep(0.01)
        current = self.objects[name]
        if (
            self.conflict_next
            or patch["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
        ):
            self.conflict_next = False
            raise ConflictError("the object has been modified")
        return self._stored(name, patch["spec"])


def _order(image: str) -> Order:
    return Order(image, f"li-{image}", format_time(NOW), "pod ns/p")


def _writer(client: FakeClient, nodes: NodeBook | None = None) -> ClusterWriter:
    return ClusterWriter(
        client,  # type: ignore[arg-type]
        nodes or NodeBook(),
        refresh=timedelta(minutes=5),
        limit=64,
        clock=lambda: NOW,
    )


@pytest.mark.timeout(10)
def test_a_burst_for_one_node_is_one_write_and_known_orders_cost_nothing() -> None:
    async def main() -> None:
        client = FakeClient()
        client._stored("n1", {"orders": []})
        writer = _writer(client)
        results = await asyncio.gather(*(writer.order("n1", [_order(f"i{k}")]) for k in range(20)))
        assert any(results)
        # Unknown, so made at once; it was there: one read, then the first order's write,
        # then one write for the nineteen that came meanwhile.
        assert client.calls == [
            "get nodes/n1",
            "create lazyimagenodes",
            "get lazyimagenodes/n1",
            "patch n1",
            "patch n1",
        ]
        assert len(client.objects["n1"]["spec"]["orders"]) == 20
        client.calls.clear()
        assert await writer.order("n1", [_order("i3")]) is False
        assert client.calls == []

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_conflict_is_read_again_and_retried_and_a_missing_node_is_made() -> None:
    async def main() -> None:
        client = FakeClient()
        writer = _writer(client)
        assert await writer.order("n2", [_order("a")])
        assert client.calls == ["get nodes/n2", "create lazyimagenodes"]
        client.calls.clear()
        client.conflict_next = True
        assert await writer.order("n2", [_order("b")])
        assert client.calls == ["patch n2", "get lazyimagenodes/n2", "patch n2"]
        images = [raw["image"] for raw in client.objects["n2"]["spec"]["orders"]]
        assert images == ["a", "b"]

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_an_older_watch_event_does_not_replace_a_newer_write() -> None:
    async def main() -> None:
        client = FakeClient()
        client._stored("n3", {"orders": []})
        nodes = NodeBook()
        writer = _writer(client, nodes)
        stale = {"metadata": {"resourceVersion": "1"}, "spec": {"orders": []}}
        assert await writer.order("n3", [_order("a")])
        nodes.observe("n3", stale)  # an event from before our write, delivered late
        client.calls.clear()
        assert await writer.order("n3", [_order("a")]) is False
        assert client.calls == []

    asyncio.run(main())
