"""The operator's watch of bound, not yet running pods.

Pods are watched with a field selector (``spec.nodeName!=,status.phase=Pending``), so the API
server sends only pods that are bound and waiting, not every status change of every running
pod; each event costs a JSON parse and the prewarm check, with no framework in between. This
is the latency-critical path: from binding to the order on the node's LazyImageNode.

One pod's event never ends the watch: whatever its handling raises is logged and counted, and
the watch goes on. The watch itself ends on an error it cannot retry, or after
``WATCH_PATIENCE`` failures in a row of one it can (a 403 until RBAC is granted, the API server
down); the operator runs it under a ``Supervisor``, which starts it again (listing every bound
pending pod anew, so nothing is missed) and fails the liveness probe if it keeps failing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from lazyimage.kube import KubeError, ResourcePath, WatchEvent

from lazyimage_operator import metrics
from lazyimage_operator.pods import PrewarmRequest, prewarm_request
from lazyimage_operator.watching import WATCH_PATIENCE, CollectionSource

__all__ = ["BOUND_PENDING", "PODS", "WATCH_PATIENCE", "CollectionSource", "follow_bound_pods"]

PODS = ResourcePath("", "v1", "pods")
BOUND_PENDING = "spec.nodeName!=,status.phase=Pending"

logger = logging.getLogger(__name__)


def _request_of(event: WatchEvent) -> PrewarmRequest | None:
    if event.type not in ("ADDED", "MODIFIED"):
        return None
    try:
        return prewarm_request(event.object)
    except Exception:
        _event_failed(_pod_name(event.object))
        return None


def _pod_name(pod: Any) -> str:
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    return f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def _event_failed(pod: str) -> None:
    """Log (with the traceback: this is a bug) and count a pod event that could not be
    handled."""
    metrics.POD_EVENT_ERRORS.inc()
    logger.exception("handling the event of pod %s failed; the watch goes on", pod)


async def follow_bound_pods(
    source: CollectionSource,
    handle: Callable[[PrewarmRequest], Awaitable[None]],
    *,
    concurrency: int = 256,
) -> None:
    """Call ``handle`` for each bound pending pod annotated for prewarm, as it comes, until
    cancelled or the watch fails. At most ``concurrency`` run at once; beyond that the watch
    waits."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def run(request: PrewarmRequest, token: object) -> None:
        try:
            await handle(request)
        except KubeError as exc:  # the API server refused: counted as a failed order
            logger.warning("prewarm of pod %s on %s failed: %s", request.pod, request.node, exc)
        except Exception:
            _event_failed(request.pod)
        finally:
            limiter.release_on_behalf_of(token)

    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        try:
            events = source.watch_collection(
                PODS, field_selector=BOUND_PENDING, max_failures=WATCH_PATIENCE
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    request = _request_of(event)
                    if request is None:
                        continue
                    token = object()
                    await limiter.acquire_on_behalf_of(token)
                    group.start_soon(run, request, token)
        except Exception as exc:
            # Raised as itself, not in a group, so the supervisor's log and the probe name it.
            failure = exc
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
