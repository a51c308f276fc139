"""The pod watch's handling of each event, from a fake event source: one pod's failure is
logged and counted and the watch goes on; only a failure of the watch itself ends it. The same
runs against a real API server in tests/integration/operator/test_pod_watch.py."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from lazyimage import names
from lazyimage.kube import KubeError, ResourcePath, WatchEvent
from lazyimage_operator import metrics
from lazyimage_operator.pods import PrewarmRequest
from lazyimage_operator.podwatch import BOUND_PENDING, WATCH_PATIENCE, follow_bound_pods

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

ERRORS = "lazyimage_operator_pod_event_errors_total"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the operator runs on kopf's asyncio loop


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "annotations": {names.POD_PREWARM_ANNOTATION: "true"},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "reg/x:1"}], **spec},
        "status": {"phase": "Pending"},
    }


class FakeSource:
    def __init__(self, *events: WatchEvent, then: Exception | None = None) -> None:
        self.events = events
        self.then = then
        self.selectors: list[str | None] = []
        self.patience: list[int | None] = []

    async def watch_collection(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        max_failures: int | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        self.selectors.append(field_selector)
        self.patience.append(max_failures)
        for event in self.events:
            yield event
        if self.then is not None:
            raise self.then


def _errors() -> float:
    return metrics.REGISTRY.get_sample_value(ERRORS) or 0.0


async def test_a_failing_event_is_counted_and_the_watch_goes_on() -> None:
    handled: list[str] = []

    async def handle(request: PrewarmRequest) -> None:
        if request.pod == "ns/explodes":
            raise RuntimeError("a bug in handling")
        if request.pod == "ns/refused":
            raise KubeError("orders refused")  # an API refusal: a failed order
        handled.append(request.pod)

    source = FakeSource(
        WatchEvent("ADDED", _pod("first")),
        WatchEvent("ADDED", _pod("explodes")),
        WatchEvent("ADDED", _pod("refused")),
        # A pod this code cannot read (containers that are not objects) fails in parsing.
        WatchEvent("MODIFIED", _pod("malformed", containers=["not-a-container"])),
        WatchEvent("DELETED", _pod("gone")),
        WatchEvent("MODIFIED", _pod("last")),
    )
    before = _errors()
    await follow_bound_pods(source, handle)  # returns: the fake's stream ends
    assert sorted(handled) == ["ns/first", "ns/last"]
    assert _errors() - before == 2
    assert source.selectors == [BOUND_PENDING]
    assert source.patience == [WATCH_PATIENCE]  # a watch that cannot work ends, and counts


async def test_a_failure_of_the_watch_itself_ends_it_for_the_supervisor() -> None:
    handled: list[str] = []

    async def handle(request: PrewarmRequest) -> None:
        handled.append(request.pod)

    source = FakeSource(WatchEvent("ADDED", _pod("one")), then=KubeError("pods is forbidden"))
    before = _errors()
    with pytest.raises(KubeError, match="pods is forbidden"):
        await follow_bound_pods(source, handle)
    assert handled == ["ns/one"]
    assert _errors() == before
