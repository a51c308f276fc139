"""The LazyImages' status loop: a status is written when the fold changes it and not again
until it changes, a LazyImage gone from the server is forgotten, and an older operator's
finalizer is released at the version read. The client is a small fake that records requests;
the loop runs against a real API server in tests/integration/operator/test_finalizers.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lazyimage.kube import NotFoundError
from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.statusloop import LazyImageView, StatusLoop, release_finalizer
from lazyimage_operator.writer import ClusterWriter

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.timeout(10)


class RecordingClient:
    def __init__(self, missing: set[str] | None = None) -> None:
        self.patches: list[tuple[str, dict[str, Any], str | None]] = []
        self.missing = missing or set()

    async def merge_patch(
        self, path: Any, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        if name in self.missing:
            raise NotFoundError(f"{name} not found")
        self.patches.append((name, patch, subresource))
        return {}


def _loop(client: RecordingClient) -> StatusLoop:
    nodes = NodeBook()
    writer = ClusterWriter(
        client,  # type: ignore[arg-type]
        nodes,
        refresh=timedelta(minutes=5),
        limit=64,
        clock=lambda: NOW,
    )
    return StatusLoop(client, writer, nodes, interval=1.0)  # type: ignore[arg-type]


def test_a_status_is_written_once_until_it_changes() -> None:
    client = RecordingClient()
    loop = _loop(client)
    loop.see("app", LazyImageView({"image": "reg/app:1"}, {}, 1))

    async def main() -> None:
        await loop.fold("app")
        await loop.fold("app")

    asyncio.run(main())
    [(name, patch, subresource)] = client.patches
    assert (name, subresource) == ("app", "status")
    assert patch["status"]["summary"] == "0/0"
    assert patch["status"]["observedGeneration"] == 1


def test_a_lazyimage_gone_from_the_server_is_forgotten() -> None:
    client = RecordingClient(missing={"gone"})
    loop = _loop(client)
    loop.see("gone", LazyImageView({"image": "reg/gone:1"}, {}, 1))
    asyncio.run(loop.fold("gone"))
    assert loop.known() == []
    assert client.patches == []


def test_an_old_finalizer_is_released_and_others_are_kept() -> None:
    client = RecordingClient()
    body = {
        "metadata": {
            "resourceVersion": "42",
            "finalizers": ["lazyimage.io/operator", "example.com/keep"],
        }
    }
    asyncio.run(release_finalizer(client, "app", body, "lazyimage.io/operator"))  # type: ignore[arg-type]
    asyncio.run(release_finalizer(client, "new", {"metadata": {}}, "lazyimage.io/operator"))  # type: ignore[arg-type]
    assert client.patches == [
        (
            "app",
            {"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "42"}},
            None,
        )
    ]
