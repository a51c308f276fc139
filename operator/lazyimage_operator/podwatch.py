"""The operator's watch of bound, not yet running pods.

Pods are watched with a field selector (``spec.nodeName!=,status.phase=Pending``), so the API
server sends only pods that are bound and waiting, not every status change of every running
pod; each event costs a JSON parse and the prewarm check, with no framework in between. This
is the latency-critical path: from binding to the order on the node's LazyImageNode.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
from lazyimage.kube import KubeClient, KubeError, ResourcePath

from lazyimage_operator.pods import PrewarmRequest, prewarm_request

__all__ = ["BOUND_PENDING", "PODS", "follow_bound_pods"]

PODS = ResourcePath("", "v1", "pods")
BOUND_PENDING = "spec.nodeName!=,status.phase=Pending"
_RESTART_DELAY = 5.0

logger = logging.getLogger(__name__)


async def follow_bound_pods(
    client: KubeClient,
    handle: Callable[[PrewarmRequest], Awaitable[None]],
    *,
    concurrency: int = 256,
) -> None:
    """Call ``handle`` for each bound pending pod annotated for prewarm, as it comes, until
    cancelled. At most ``concurrency`` run at once; beyond that the watch waits."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def run(request: PrewarmRequest, token: object) -> None:
        try:
            await handle(request)
        except KubeError as exc:
            logger.warning("prewarm of pod %s on %s failed: %s", request.pod, request.node, exc)
        finally:
            limiter.release_on_behalf_of(token)

    async with anyio.create_task_group() as group:
        while True:
            events = client.watch_collection(PODS, field_selector=BOUND_PENDING)
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event.type not in ("ADDED", "MODIFIED"):
                            continue
                        request = prewarm_request(event.object)
                        if request is None:
                            continue
                        token = object()
                        await limiter.acquire_on_behalf_of(token)
                        group.start_soon(run, request, token)
            except KubeError as exc:  # not retryable by the watch itself (e.g. 403)
                logger.error("watching pods failed, again in %.0f s: %s", _RESTART_DELAY, exc)
                await anyio.sleep(_RESTART_DELAY)
