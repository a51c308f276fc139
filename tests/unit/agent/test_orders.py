"""The order runner's bookkeeping: which orders run, which are adopted after a restart, and
what the status says. The kube client and the prewarmer are small fakes here; the whole
channel runs against a real API server in tests/integration/operator."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
import trio
from lazyimage import errors
from lazyimage.agent.orders import OrderRunner
from lazyimage.agent.prewarm import PrewarmResult
from lazyimage.kube import NotFoundError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent runs on trio


T0 = "2026-11-28T12:00:00.000000Z"
T1 = "2026-11-28T12:05:00.000000Z"


def _node(
    orders: list[tuple[str, str]],
    images: list[dict[str, Any]] | None = None,
    secrets: dict[str, list[str]] | None = None,
) -> Any:
    """The node's object; ``secrets`` maps an image to the names of its order's pull secrets
    (in namespace ``ns``)."""
    secrets = secrets or {}
    return {
        "metadata": {"name": "n1", "resourceVersion": "1"},
        "spec": {
            "orders": [
                {
                    "image": i,
                    "lazyImage": f"li-{i}",
                    "issuedAt": t,
                    "pullSecrets": [{"namespace": "ns", "name": n} for n in secrets.get(i, [])],
                }
                for i, t in orders
            ]
        },
        "status": {"images": images or []},
    }


# Only against a hang: the runner is driven by fakes, so nothing here measures speed, but a
# loaded machine (or rendering a logged traceback) can take seconds.
_HANG_GUARD = 60


class FakeKube:
    def __init__(self) -> None:
        self.objects: trio.MemorySendChannel[Any]
        self._send, self._receive = trio.open_memory_channel[Any](16)
        self.patches: list[dict[str, Any]] = []

    async def push(self, obj: Any) -> None:
        await self._send.send(obj)

    async def watch_object(self, path: Any, name: str) -> AsyncGenerator[Any, None]:
        async for obj in self._receive:
            yield obj

    async def get(self, path: Any, name: str) -> Any:
        raise NotFoundError(f"{name} not found")

    async def merge_patch(self, path: Any, name: str, patch: Any, **_: Any) -> Any:
        self.patches.append(patch)
        return {}


class FakePrewarmer:
    def __init__(self, failing: Sequence[str] = (), crashing: Sequence[str] = ()) -> None:
        self.calls: list[str] = []
        self.granted: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self.failing = failing
        self.crashing = crashing

    async def grant_secrets(self, image: str, secrets: Sequence[tuple[str, str]]) -> None:
        self.granted.append((image, tuple(secrets)))
        if image in self.failing:
            raise errors.LazyImageError(f"pull secret of {image} not found")

    async def prewarm(
        self, image: str, secrets: Sequence[tuple[str, str]] = (), learned: Any = None
    ) -> PrewarmResult:
        self.calls.append(image)
        await trio.sleep(0.01)
        if image in self.failing:
            raise errors.UnavailableError("registry down", what=image)
        if image in self.crashing:
            # What a nursery of layer prefetches raises when one fails in an unplanned way.
            raise ExceptionGroup("layers", [RuntimeError("a bug in a layer prefetch")])
        return PrewarmResult("sha256:" + "a" * 64, ("sha256:" + "b" * 64,), 1, 0, 100, 50, 0.01)


def _runner(kube: FakeKube, prewarmer: FakePrewarmer) -> OrderRunner:
    return OrderRunner(
        kube,  # type: ignore[arg-type]
        "n1",
        prewarmer,  # type: ignore[arg-type]
        cache_counts=lambda digests: (7 * len(digests), len(digests)),
        cache_usage=lambda: (10, 100),
        heartbeat=0.2,
    )


async def _settle(kube: FakeKube, predicate: Any) -> dict[str, Any]:
    with trio.fail_after(_HANG_GUARD):
        while not (kube.patches and predicate(kube.patches[-1]["status"])):
            await trio.sleep(0.02)
    status: dict[str, Any] = kube.patches[-1]["status"]
    return status


async def test_orders_run_once_and_again_when_reissued() -> None:
    kube, prewarmer = FakeKube(), FakePrewarmer(failing=["bad"])
    runner = _runner(kube, prewarmer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await kube.push(_node([("good", T0), ("bad", T0)]))
        status = await _settle(kube, lambda s: s["ready"] + s["failed"] == 2)
        by_image = {raw["image"]: raw for raw in status["images"]}
        assert by_image["good"]["state"] == "Ready"
        assert by_image["good"]["fetchedBytes"] == 50 and by_image["good"]["layers"] == 1
        assert by_image["good"]["cacheHits"] == 7 and by_image["good"]["cacheMisses"] == 1
        assert (
            by_image["bad"]["state"] == "Failed" and "registry down" in by_image["bad"]["message"]
        )
        assert status["cache"] == {"bytes": 10, "capacity": 100}
        # The same orders again: nothing runs. A new issuedAt runs the image again.
        await kube.push(_node([("good", T0), ("bad", T0)]))
        await kube.push(_node([("good", T1)]))
        status = await _settle(kube, lambda s: s["orders"] == 1 and s["ready"] == 1)
        assert status["images"][0]["issuedAt"] == T1
        nursery.cancel_scope.cancel()
    assert prewarmer.calls.count("good") == 2 and prewarmer.calls.count("bad") == 1


async def test_after_a_restart_done_orders_are_adopted_and_interrupted_ones_rerun() -> None:
    kube, prewarmer = FakeKube(), FakePrewarmer()
    runner = _runner(kube, prewarmer)
    reported = [
        {
            "image": "done",
            "issuedAt": T0,
            "state": "Ready",
            "digest": "sha256:" + "c" * 64,
            "layers": 3,
            "fetchedBytes": 9,
        },
        {"image": "cut", "issuedAt": T0, "state": "Fetching"},
        {"image": "old", "issuedAt": T0, "state": "Ready"},
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await kube.push(_node([("done", T0), ("cut", T0), ("old", T1)], reported))
        status = await _settle(kube, lambda s: s["ready"] == 3)
        nursery.cancel_scope.cancel()
    assert sorted(prewarmer.calls) == ["cut", "old"]
    done = next(raw for raw in status["images"] if raw["image"] == "done")
    assert done["layers"] == 3 and done["fetchedBytes"] == 9


async def test_a_heartbeat_is_written_without_changes() -> None:
    kube, prewarmer = FakeKube(), FakePrewarmer()
    runner = _runner(kube, prewarmer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await kube.push(_node([]))
        await _settle(kube, lambda s: s["orders"] == 0)
        first = len(kube.patches)
        with trio.fail_after(_HANG_GUARD):
            while len(kube.patches) < first + 2:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    beats = [patch["status"]["agent"]["heartbeat"] for patch in kube.patches[-2:]]
    assert beats[0] < beats[1]


async def test_an_order_that_crashes_is_failed_and_the_runner_goes_on() -> None:
    kube, prewarmer = FakeKube(), FakePrewarmer(crashing=["crash"])
    runner = _runner(kube, prewarmer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await kube.push(_node([("crash", T0), ("good", T0)]))
        status = await _settle(kube, lambda s: s["ready"] + s["failed"] == 2)
        by_image = {raw["image"]: raw for raw in status["images"]}
        assert by_image["crash"]["state"] == "Failed"
        assert "internal error: ExceptionGroup" in by_image["crash"]["message"]
        assert by_image["good"]["state"] == "Ready"
        # Later orders still run: the runner outlived the crash.
        await kube.push(_node([("crash", T0), ("good", T0), ("later", T0)]))
        status = await _settle(kube, lambda s: s["ready"] == 2)
        nursery.cancel_scope.cancel()
    assert sorted(prewarmer.calls) == ["crash", "good", "later"]


async def test_pull_secrets_of_adopted_or_amended_orders_are_granted_without_a_prewarm() -> None:
    kube, prewarmer = FakeKube(), FakePrewarmer(failing=["gone"])
    runner = _runner(kube, prewarmer)
    ready = {"issuedAt": T0, "state": "Ready", "digest": "sha256:" + "c" * 64}
    reported = [{"image": image, **ready} for image in ("done", "gone", "public")]
    orders = [("done", T0), ("gone", T0), ("public", T0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await kube.push(_node(orders, reported, {"done": ["pull"], "gone": ["old"]}))
        with trio.fail_after(_HANG_GUARD):
            while len(prewarmer.granted) < 2:
                await trio.sleep(0.01)
        # The same order (same issuedAt) gains a secret: granted, not prewarmed again.
        await kube.push(_node(orders, reported, {"done": ["pull"], "public": ["new"]}))
        with trio.fail_after(_HANG_GUARD):
            while len(prewarmer.granted) < 3:
                await trio.sleep(0.01)
        status = await _settle(kube, lambda s: s["ready"] == 3)
        nursery.cancel_scope.cancel()
    assert prewarmer.calls == []
    assert sorted(prewarmer.granted) == [
        ("done", (("ns", "pull"),)),
        ("gone", (("ns", "old"),)),
        ("public", (("ns", "new"),)),
    ]
    # A secret that cannot be granted costs nothing else.
    assert {raw["image"]: raw["state"] for raw in status["images"]}["gone"] == "Ready"
