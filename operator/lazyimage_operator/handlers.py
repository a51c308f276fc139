"""The kopf handlers: thin, each hands its event to a plain function.

Pods are only watched, never written, and not through kopf: ``podwatch`` follows bound pending
pods with a server-side selector, under a ``Supervisor`` that the liveness probe asks; so are
Nodes (``nodewatch``) and LazyImageNodes (``lazynodewatch``), which kopf would index slowly at
every start. What the operator knows of each LazyImageNode lives in one ``NodeBook``. The
LazyImages' status is folded by the operator's own ``StatusLoop``, not a kopf timer, so that
kopf puts no finalizer on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from lazyimage import names
from lazyimage.kube import KubeClient, KubeConfig, KubeError

from lazyimage_operator import metrics
from lazyimage_operator.config import OperatorConfig
from lazyimage_operator.lazynodewatch import follow_lazyimage_nodes
from lazyimage_operator.nodebook import NodeBook
from lazyimage_operator.nodewatch import NodeDirectory, follow_nodes
from lazyimage_operator.pods import PrewarmRequest
from lazyimage_operator.podwatch import follow_bound_pods
from lazyimage_operator.prewarm import prewarm_pod
from lazyimage_operator.profiles import newer_profiles
from lazyimage_operator.statusloop import LazyImageView, StatusLoop, release_finalizer
from lazyimage_operator.supervisor import Supervisor
from lazyimage_operator.writer import ClusterWriter

__all__ = ["OperatorKube", "connection_info", "operator_settings", "register"]

_GROUP, _VERSION = names.API_GROUP, names.API_VERSION

logger = logging.getLogger(__name__)
# The operator's requests in flight at once (watches aside). Each request scans every pooled
# connection in httpcore, so more connections cost the operator CPU it needs under a burst:
# 3,000 pods at 100/s on 2 cores, two runs each, 8 beat 16 (p99 0.4-1.5 s against 3.7-5.0 s,
# 7.0 s of CPU against 8.9-9.8 s); unpaced, 48 and 4 did worse than both.
REQUESTS_IN_FLIGHT = 8
# kopf's finalizer name. No handler needs one now; LazyImages written by operators that had a
# status timer may still carry it, and lose it when next seen.
FINALIZER = f"{names.API_GROUP}/operator"


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.API_GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    return settings


class OperatorKube:
    """The operator's one KubeConfig, loaded once (``loaded``, or on first use): its own
    client and kopf's login both use it, so that kopf and the client reach the same server
    as the same identity."""

    def __init__(self, kubeconfig: Path | None, loaded: KubeConfig | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._config = loaded
        self._given: str | None = None  # the Authorization kopf was last given
        self._logins = 0

    async def config(self) -> KubeConfig:
        if self._config is None:
            self._config = await KubeConfig.load_async(self._kubeconfig)
        return self._config

    async def login(self) -> kopf.ConnectionInfo:
        """kopf's credentials. kopf logs in again only after a 401: the header it had is
        then renewed from its source (an exec plugin runs again, a token file is re-read),
        unless the operator's own client has renewed it already."""
        config = await self.config()
        if self._logins:
            header = await config.credentials.renew(self._given)
        else:
            header = await config.credentials.current()
        self._logins += 1
        self._given = header
        return connection_info(config, header)


def connection_info(config: KubeConfig, authorization: str | None) -> kopf.ConnectionInfo:
    """kopf's form of ``config`` with the Authorization header ``authorization``."""
    scheme, _, token = authorization.partition(" ") if authorization else ("", "", "")
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_file,
        insecure=not config.verify,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.client_cert_file,
        private_key_path=config.client_key_file,
    )


async def learn_profiles(
    writer: ClusterWriter,
    statuses: StatusLoop,
    learned: dict[str, str],
    node: str,
    status: Mapping[str, Any],
) -> None:
    """Make each profile in a node's report that is newer than its LazyImage's (as last seen,
    or as last written here) the LazyImage's profile. A LazyImage not seen yet is left for a
    later report: its profile may be newer than the report's."""

    def known(lazy: str) -> str:
        return max(learned.get(lazy, ""), statuses.recorded_profile(lazy) or "")

    for lazy, profile in newer_profiles(node, status, known).items():
        if statuses.recorded_profile(lazy) is None:
            continue
        try:
            written = await writer.set_profile(lazy, profile)
        except KubeError as exc:  # the next report brings it here again
            logger.warning("could not write the startup profile of %s: %s", lazy, exc)
            continue
        if written:
            learned[lazy] = profile["recorded"]
            metrics.PROFILES_LEARNED.inc()
            logger.info(
                "learned the startup profile of %s from %s: %s files",
                lazy,
                node,
                profile.get("files", "?"),
            )


def register(
    registry: kopf.OperatorRegistry, config: OperatorConfig, kube: KubeConfig | None = None
) -> None:
    """Register the handlers on ``registry``, bound to ``config``. Each has an explicit id:
    ids name kopf's state on objects.
    ``kube`` is ``config.kubeconfig`` already loaded, if it was."""
    nodes = NodeBook(listed=False)
    directory = NodeDirectory()
    operator_kube = OperatorKube(config.kubeconfig, kube)

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await operator_kube.login()

    @kopf.on.startup(id="connect", registry=registry)
    async def connect(memo: kopf.Memo, **_: Any) -> None:
        if config.metrics:
            metrics.serve_metrics(config.metrics)
        client = KubeClient(await operator_kube.config(), max_requests=REQUESTS_IN_FLIGHT)
        await client.__aenter__()
        writer = ClusterWriter(
            client,
            nodes,
            refresh=config.order_refresh,
            limit=config.orders_per_node,
            directory=directory,
        )
        memo["client"], memo["writer"] = client, writer

        async def pod_bound(request: PrewarmRequest) -> None:
            lazy = config.lazy_runtime_classes
            if lazy and request.runtime_class not in lazy:
                # Pulled in full by containerd's default snapshotter: a prewarm would only
                # fetch what nothing reads.
                metrics.ORDERS.labels("pod", "not-lazy").inc(len(request.images))
                return
            started = time.monotonic()
            try:
                orders = await prewarm_pod(writer, request)
            except KubeError:
                metrics.ORDERS.labels("pod", "failed").inc()
                raise
            if not orders:
                metrics.ORDERS.labels("pod", "fresh").inc(len(request.images))
                return
            metrics.ORDERS.labels("pod", "written").inc(len(orders))
            metrics.ORDER_SECONDS.observe(time.monotonic() - started)
            logger.info(
                "ordered prefetch on %s for pod %s: %s",
                request.node,
                request.pod,
                ", ".join(order.image for order in orders),
            )

        # Not a kopf handler: pods are the hot path, watched with a server-side selector.
        watch = Supervisor(
            "watch of bound pods",
            lambda: follow_bound_pods(client, pod_bound),
            restarts=metrics.POD_WATCH_RESTARTS,
        )
        memo["pod_watch"], memo["pods"] = watch, asyncio.create_task(watch.run())
        # Nodes neither: see nodewatch.
        node_watch = Supervisor(
            "watch of nodes",
            lambda: follow_nodes(client, directory),
            restarts=metrics.NODE_WATCH_RESTARTS,
        )
        memo["node_watch"], memo["node_list"] = node_watch, asyncio.create_task(node_watch.run())
        statuses = StatusLoop(client, writer, nodes, config.status_interval, directory)
        learned: dict[str, str] = {}  # profiles written, until the LazyImage's event shows them

        async def reported(node: str, status: Mapping[str, Any]) -> None:
            await learn_profiles(writer, statuses, learned, node, status)

        # LazyImageNodes neither: see lazynodewatch.
        book_watch = Supervisor(
            "watch of LazyImageNodes",
            lambda: follow_lazyimage_nodes(client, nodes, reported),
            restarts=metrics.LAZYIMAGE_NODE_WATCH_RESTARTS,
        )
        memo["lazyimage_node_watch"] = book_watch
        memo["book"] = asyncio.create_task(book_watch.run())
        folding = Supervisor(
            "status loop of LazyImages", statuses.run, restarts=metrics.STATUS_LOOP_RESTARTS
        )
        memo["statuses"], memo["status_loop"] = statuses, folding
        memo["folding"] = asyncio.create_task(folding.run())

    def supervised(memo: kopf.Memo, key: str) -> dict[str, int]:
        loop = memo.get(key)
        if not isinstance(loop, Supervisor):
            raise kopf.PermanentError(f"{key} was never started")
        problem = loop.problem()
        if problem is not None:
            raise kopf.PermanentError(problem)
        return {"restarts": loop.restarts}

    @kopf.on.probe(id="pod_watch", registry=registry)
    async def pod_watch_alive(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        """Fails the liveness probe while the watch of bound pods keeps failing."""
        return supervised(memo, "pod_watch")

    @kopf.on.probe(id="node_watch", registry=registry)
    async def node_watch_alive(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        """Fails the liveness probe while the watch of nodes keeps failing."""
        return supervised(memo, "node_watch")

    @kopf.on.probe(id="lazyimage_node_watch", registry=registry)
    async def lazyimage_node_watch_alive(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        """Fails the liveness probe while the watch of LazyImageNodes keeps failing."""
        return supervised(memo, "lazyimage_node_watch")

    @kopf.on.probe(id="status_loop", registry=registry)
    async def status_loop_alive(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        """Fails the liveness probe while the LazyImages' status loop keeps failing."""
        return supervised(memo, "status_loop")

    @kopf.on.cleanup(id="disconnect", registry=registry)
    async def disconnect(memo: kopf.Memo, **_: Any) -> None:
        for key in ("pods", "node_list", "book", "folding"):
            task = memo.get(key)
            if isinstance(task, asyncio.Task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        client = memo.get("client")
        if isinstance(client, KubeClient):
            await client.__aexit__(None, None, None)

    @kopf.on.event(_GROUP, _VERSION, names.LAZYIMAGE_PLURAL, id="lazyimage_seen", registry=registry)
    async def lazyimage_seen(
        name: str,
        type: str,
        body: kopf.Body,
        spec: kopf.Spec,
        status: kopf.Status,
        meta: kopf.Meta,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        statuses: StatusLoop = memo["statuses"]
        if type == "DELETED":
            statuses.forget(name)
            return
        view = LazyImageView(dict(spec), dict(status), meta.get("generation"))
        statuses.see(name, view)
        await release_finalizer(memo["client"], name, body, FINALIZER)
