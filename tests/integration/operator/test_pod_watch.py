"""The supervised pod watch against a real API server: a pod whose handling raises is logged
and counted and the watch goes on; a watch that keeps failing is restarted with backoff and
judged unhealthy until it works again. The probe itself is in test_handlers.py."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import pytest
from lazyimage.kube import KubeClient, KubeConfig, ResourcePath, WatchEvent
from lazyimage_operator import metrics
from lazyimage_operator.pods import PrewarmRequest
from lazyimage_operator.podwatch import follow_bound_pods
from lazyimage_operator.supervisor import Supervisor

from tests.fixtures.kube import KubeCluster
from tests.integration.operator.helpers import create, prewarm_pod

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ERRORS = "lazyimage_operator_pod_event_errors_total"
RESTARTS = "lazyimage_operator_pod_watch_restarts_total"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the operator runs on kopf's asyncio loop


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


async def _until(what: str, probe: Callable[[], Any], timeout: float = 60) -> None:
    with anyio.move_on_after(timeout):
        while not probe():
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.anyio
async def test_a_pod_whose_handling_raises_is_counted_and_the_watch_goes_on(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    cluster, ns = kube_cluster, kube_namespace
    handled: list[str] = []

    async def handle(request: PrewarmRequest) -> None:
        if request.pod == f"{ns}/explodes":
            raise RuntimeError("a bug in handling this pod")
        handled.append(request.pod)

    errors, restarts = _sample(ERRORS), _sample(RESTARTS)
    async with KubeClient(KubeConfig.load(cluster.kubeconfig)) as client:
        watch = Supervisor(
            "watch of bound pods",
            lambda: follow_bound_pods(client, handle),
            restarts=metrics.POD_WATCH_RESTARTS,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(watch.run)
            for name in ("before", "explodes", "after"):
                pod = prewarm_pod(name, ns, "watch-node", "reg.example/app:1")
                await anyio.to_thread.run_sync(create, cluster, pod)
            await _until("the pod after the failing one", lambda: f"{ns}/after" in handled)
            await _until("the failure counted", lambda: _sample(ERRORS) - errors >= 1)
            # Still watching: a pod created after the failure arrives as well.
            pod = prewarm_pod("later", ns, "watch-node", "reg.example/app:1")
            await anyio.to_thread.run_sync(create, cluster, pod)
            await _until("a later pod", lambda: f"{ns}/later" in handled)
            assert watch.problem() is None
            group.cancel_scope.cancel()
    mine = [pod for pod in handled if pod.startswith(f"{ns}/")]
    assert sorted(mine) == [f"{ns}/after", f"{ns}/before", f"{ns}/later"]
    assert _sample(ERRORS) - errors == 1
    assert _sample(RESTARTS) == restarts  # it went on: never restarted


class RefusedUntilFixed:
    """The real client, asking with a field selector the API server refuses (400: a failure
    the watch cannot wait out) until ``fixed``."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.fixed = False

    def watch_collection(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        max_failures: int | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        selector = field_selector if self.fixed else "spec.noSuchField=x"
        return self.client.watch_collection(
            path, field_selector=selector, max_failures=max_failures
        )


@pytest.mark.anyio
async def test_a_watch_that_keeps_failing_is_restarted_and_unhealthy_until_it_works(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    cluster, ns = kube_cluster, kube_namespace
    handled: list[str] = []

    async def handle(request: PrewarmRequest) -> None:
        handled.append(request.pod)

    restarts = _sample(RESTARTS)
    async with KubeClient(KubeConfig.load(cluster.kubeconfig)) as client:
        source = RefusedUntilFixed(client)
        # Short pauses: the policy itself is tested on a virtual clock in the unit tests.
        watch = Supervisor(
            "watch of bound pods",
            lambda: follow_bound_pods(source, handle),
            restarts=metrics.POD_WATCH_RESTARTS,
            pause=0.05,
            pause_max=0.4,
            failures_allowed=3,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(watch.run)
            await _until("the watch judged failing", lambda: watch.problem() is not None)
            problem = watch.problem() or ""
            assert "failed 3 times in a row" in problem, problem
            assert "400" in problem and "noSuchField" in problem, problem
            assert _sample(RESTARTS) - restarts >= 3

            source.fixed = True
            pod = prewarm_pod("fixed", ns, "watch-node", "reg.example/app:1")
            await anyio.to_thread.run_sync(create, cluster, pod)
            await _until("the pod, once the watch works", lambda: f"{ns}/fixed" in handled)
            await _until("the watch healthy again", lambda: watch.problem() is None)
            group.cancel_scope.cancel()
