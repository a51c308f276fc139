"""Carrying out the operator's prefetch orders for this node.

The node's ``LazyImageNode`` is the channel: the operator writes ``spec.orders``, and this
runner, the only reader of that object on the node, prefetches each ordered image and writes
what it did to the object's ``status`` (and nothing else). An order whose ``issuedAt`` changed
is carried out again. After a restart, an order the status already reports as done for the
same ``issuedAt`` is not repeated; one that was interrupted is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from lazyimage import __version__, errors, metrics, names
from lazyimage.agent.prewarm import ImagePrewarmer, PrewarmResult
from lazyimage.agent.profiles import ProfileBook, RecordedLayer, profile_paths
from lazyimage.api import ImageReport, Order, utc_now
from lazyimage.kube import KubeClient, KubeError, NotFoundError, ResourcePath

__all__ = ["LAZYIMAGE_NODES", "ImageState", "OrderRunner"]

log = structlog.get_logger(__name__)

LAZYIMAGE_NODES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_NODE_PLURAL)
LAZYIMAGES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_PLURAL)
# Reports written less often than this are batched; a heartbeat goes at least this often.
_COALESCE = 0.2
_HEARTBEAT = 30.0
_RETRY = 2.0


@dataclass
class ImageState:
    order: Order
    state: str = "Pending"
    message: str = ""
    result: PrewarmResult | None = None
    updated: str = field(default_factory=utc_now)
    # Digests of the image's layers as last reported (kept across restarts for cache counts).
    layers: tuple[str, ...] = ()

    def to_status(self, counts: Callable[[Sequence[str]], tuple[int, int]]) -> dict[str, Any]:
        hits, misses = counts(self.layers)
        result = self.result
        return ImageReport(
            image=self.order.image,
            issued_at=self.order.issued_at,
            state=self.state,
            updated=self.updated,
            lazy_image=self.order.lazy_image,
            message=self.message,
            digest=result.digest if result else None,
            layers=result.layer_count if result else None,
            zone_bytes=result.zone_bytes if result else None,
            fetched_bytes=result.fetched_bytes if result else None,
            seconds=result.seconds if result else None,
            profile_files=result.profile_files if result else None,
            cache_hits=hits,
            cache_misses=misses,
        ).to_dict()


class OrderRunner:
    def __init__(
        self,
        kube: KubeClient,
        node: str,
        prewarmer: ImagePrewarmer,
        *,
        cache_counts: Callable[[Sequence[str]], tuple[int, int]],
        cache_usage: Callable[[], tuple[int, int]],
        concurrency: int = 2,
        heartbeat: float = _HEARTBEAT,
        profiles: ProfileBook | None = None,
        mounted: Callable[[], Iterable[RecordedLayer]] = tuple,
    ) -> None:
        self._kube = kube
        self._node = node
        self._prewarmer = prewarmer
        self._counts = cache_counts
        self._usage = cache_usage
        self._limiter = trio.CapacityLimiter(concurrency)
        self._heartbeat = heartbeat
        self._states: dict[str, ImageState] = {}
        self._seen = False
        self._changed = trio.Event()
        self._profiles = profiles
        self._mounted = mounted
        self._profiles_changed = False

    @property
    def states(self) -> Mapping[str, ImageState]:
        return self._states

    async def run(self) -> None:
        """Follow the node's object and carry out its orders, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_loop)
            if self._profiles is not None:
                nursery.start_soon(self._profile_loop, self._profiles)
            stream = self._kube.watch_object(LAZYIMAGE_NODES, self._node)
            async with contextlib.aclosing(stream):
                async for obj in stream:
                    self._apply(nursery, obj)

    def _apply(self, nursery: trio.Nursery, obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        orders = [
            order
            for raw in (obj.get("spec") or {}).get("orders") or []
            if isinstance(raw, Mapping) and (order := Order.from_dict(raw)) is not None
        ]
        if not self._seen:
            for order in self._adopt((obj.get("status") or {}).get("images") or [], orders):
                # Done before a restart: its image's mounts still need its pull secrets.
                nursery.start_soon(self._grant_secrets, order)
            self._seen = True
        wanted = {order.image for order in orders}
        for image in [image for image in self._states if image not in wanted]:
            del self._states[image]
        for order in orders:
            current = self._states.get(order.image)
            if current is not None and current.order.issued_at == order.issued_at:
                if order.pull_secrets != current.order.pull_secrets:
                    nursery.start_soon(self._grant_secrets, order)
                current.order = order  # e.g. a secret added to the same order
                continue
            state = ImageState(order, layers=current.layers if current else ())
            self._states[order.image] = state
            log.info("prefetch_ordered", image=order.image, issued_at=order.issued_at)
            nursery.start_soon(self._execute, state)
        self._changed.set()

    def _adopt(self, reports: Sequence[Any], orders: Sequence[Order]) -> list[Order]:
        """Take over what the status says was done before a restart, for unchanged orders;
        returns those taken over."""
        by_image = {order.image: order for order in orders}
        adopted: list[Order] = []
        for raw in reports:
            if not isinstance(raw, Mapping):
                continue
            report = ImageReport.from_dict(raw)
            order = by_image.get(report.image)
            if order is None or report.issued_at != order.issued_at:
                continue
            if report.state in ("Ready", "Failed"):
                self._states[order.image] = ImageState(
                    order,
                    state=report.state,
                    message=report.message,
                    result=_result_of(report),
                    updated=report.updated or utc_now(),
                )
                adopted.append(order)
        return adopted

    async def _grant_secrets(self, order: Order) -> None:
        """Scope an order's pull secrets to its image without carrying the order out again.
        A failure costs only this: the image's reads go on with the credentials they have."""
        if not order.pull_secrets:
            return
        try:
            await self._prewarmer.grant_secrets(order.image, order.pull_secrets)
        except (errors.LazyImageError, OSError) as exc:
            log.warning("pull_secrets_not_granted", image=order.image, error=str(exc))
        except Exception:
            log.exception("pull_secrets_grant_crashed", image=order.image)

    async def _execute(self, state: ImageState) -> None:
        async with self._limiter:
            if self._states.get(state.order.image) is not state:
                return  # superseded by a newer order while it waited
            state.state, state.updated = "Fetching", utc_now()
            self._changed.set()
            started = time.monotonic()
            try:
                learned = await self._learned(state.order)
                result = await self._prewarmer.prewarm(
                    state.order.image, state.order.pull_secrets, learned
                )
            except (errors.LazyImageError, OSError) as exc:
                self._fail(state, str(exc))
            except Exception as exc:
                # One order, whatever it holds, must never end the runner (and the agent
                # with it): the pod author chose the image.
                log.exception("prefetch_order_crashed", image=state.order.image)
                self._fail(state, f"internal error: {type(exc).__name__}: {exc}")
            else:
                state.state, state.message, state.result = "Ready", "", result
                state.layers = result.layers
                metrics.PREWARM_ORDERS.labels("ready").inc()
                metrics.PREWARM_SECONDS.observe(result.seconds)
            state.updated = utc_now()
            log.info(
                "prefetch_order_done",
                image=state.order.image,
                state=state.state,
                seconds=round(time.monotonic() - started, 3),
            )
            self._changed.set()

    def _fail(self, state: ImageState, message: str) -> None:
        state.state, state.message = "Failed", message
        metrics.PREWARM_ORDERS.labels("failed").inc()
        log.warning("prefetch_failed", image=state.order.image, error=message)

    async def _learned(self, order: Order) -> dict[str, list[str]]:
        """The startup profile the operator keeps in the order's LazyImage, if any."""
        if not order.lazy_image:
            return {}
        try:
            lazy = await self._kube.get(LAZYIMAGES, order.lazy_image)
        except KubeError as exc:
            log.info("profile_unavailable", lazy_image=order.lazy_image, error=str(exc))
            return {}
        return profile_paths((lazy.get("status") or {}).get("profile"))

    async def _profile_loop(self, book: ProfileBook) -> None:
        while True:
            await trio.sleep(min(1.0, book.window / 2))
            if book.collect(self._mounted(), utc_now()):
                self._profiles_changed = True
                self._changed.set()

    def status(self) -> dict[str, Any]:
        images = [state.to_status(self._counts) for state in self._states.values()]
        used, capacity = self._usage()
        return {
            "orders": len(images),
            "ready": sum(1 for raw in images if raw["state"] == "Ready"),
            "failed": sum(1 for raw in images if raw["state"] == "Failed"),
            "agent": {"version": __version__, "heartbeat": utc_now()},
            "cache": {"bytes": used, "capacity": capacity},
            "images": images,
        }

    async def _report_loop(self) -> None:
        while True:
            with trio.move_on_after(self._heartbeat):
                await self._changed.wait()
            await trio.sleep(_COALESCE)
            self._changed = trio.Event()
            if not self._seen:
                continue
            status = self.status()
            # Profiles are large and rarely change: sent only when they do (a merge patch
            # leaves the fields it does not name as they are).
            send_profiles = self._profiles is not None and self._profiles_changed
            if send_profiles and self._profiles is not None:
                status["profiles"] = self._profiles.to_status()
                self._profiles_changed = False
            try:
                await self._kube.merge_patch(
                    LAZYIMAGE_NODES, self._node, {"status": status}, subresource="status"
                )
            except NotFoundError:
                self._seen = False  # deleted: nothing to report to until it is back
                self._profiles_changed |= send_profiles
            except KubeError as exc:
                log.warning("status_report_failed", node=self._node, error=str(exc))
                self._profiles_changed |= send_profiles
                await trio.sleep(_RETRY)
                self._changed.set()


def _result_of(report: ImageReport) -> PrewarmResult | None:
    if report.state != "Ready" or report.digest is None:
        return None
    return PrewarmResult(
        digest=report.digest,
        layers=(),
        layer_count=report.layers or 0,
        skipped=0,
        zone_bytes=report.zone_bytes or 0,
        fetched_bytes=report.fetched_bytes or 0,
        seconds=report.seconds or 0.0,
    )
